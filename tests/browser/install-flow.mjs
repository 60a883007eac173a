// The install flow a person clicks, in Debian's headless Chromium (playwright-core drives it;
// no browser is downloaded). tests/integration/browser.rs starts the local stack, mints the links
// and runs this script with one JSON argument:
//   {"chromium": "/usr/bin/chromium", "screenshots": "<dir>",
//    "allow": "<install link>", "deny": "<install link>", "expired": "<install link>"}
// It prints one JSON object: for each flow, every page the browser showed (URL, HTTP status, the
// headers that protect the page, title, heading, text) and where its screenshot is.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const input = JSON.parse(process.argv[2]);
mkdirSync(input.screenshots, { recursive: true });

const browser = await chromium.launch({
  executablePath: input.chromium,
  headless: true,
  // The machine's network is closed: no background traffic, no sandbox (tests run as root).
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const PROTECTIVE = ["cache-control", "content-security-policy", "referrer-policy", "x-content-type-options", "content-type"];

async function shown(page, response, name) {
  const headers = response ? await response.allHeaders() : {};
  const screenshot = join(input.screenshots, `${name}.png`);
  await page.screenshot({ path: screenshot, fullPage: true });
  return {
    name,
    url: page.url(),
    status: response ? response.status() : null,
    headers: Object.fromEntries(PROTECTIVE.map((h) => [h, headers[h] ?? null])),
    title: await page.title(),
    heading: (await page.locator("h1").first().textContent()) ?? "",
    text: await page.locator("body").innerText(),
    screenshot,
  };
}

// Opens the link, then (when `click` is given) clicks that link of Klaviyo's consent page.
async function flow(name, link, click) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pages = [];
  const first = await page.goto(link);
  pages.push(await shown(page, first, `${name}-1`));
  if (click) {
    const [response] = await Promise.all([
      page.waitForNavigation(),
      page.click(click),
    ]);
    pages.push(await shown(page, response, `${name}-2`));
  }
  await context.close();
  return pages;
}

const result = {
  deny: await flow("deny", input.deny, "#deny"),
  allow: await flow("allow", input.allow, "#allow"),
  expired: await flow("expired", input.expired, null),
};
await browser.close();
console.log(JSON.stringify(result));
