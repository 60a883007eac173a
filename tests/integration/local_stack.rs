//! The local stack of `make dev` (`harness::local_stack`): a simulator starts only for the URLs
//! left unset, the demo tenant is registered and installs through its printed link, the guide's
//! sync walk-throughs (Omneo → Klaviyo, then Klaviyo → Omneo) and its backfill section work as printed, and the guide never
//! echoes a secret that came from the environment; the stack serves `docs/openapi.json` at
//! `GET /openapi.json`, as the guide says. Every stack runs with `PORT=0` (free ports for the app
//! and the simulators), so these tests run in parallel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::klaviyo::topics;
use harness::local_stack::{DEMO_PROFILES, DEMO_TENANT, DEV_CLIENT_ID, LocalStack};
use harness::omneo::Profile;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::Value;
use shared::config::Config;
use shared::crypto::new_keyring_spec;
use shared::domain::TenantId;
use shared::store::TenantSecret;

/// Starts a stack from `vars` (plus `PORT=0`), as `make dev` starts it from the environment.
pub(crate) async fn start(vars: &[(&str, &str)]) -> LocalStack {
    let vars: HashMap<String, String> = [("PORT", "0")]
        .iter()
        .chain(vars)
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    LocalStack::start(&|name: &str| vars.get(name).cloned(), |_| Ok(()))
        .await
        .expect("local stack")
}

/// A client that does not follow redirects, like the browser step by step.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens the demo tenant's install link; returns the authorize URL it redirects to (asserting 302).
async fn follow_install_link(stack: &LocalStack) -> String {
    let response = http()
        .get(stack.install_link.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302, "install link → 302");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The app's Klaviyo URLs, in the order of `ELSEWHERE`: authorize, token, revoke, API.
fn klaviyo_urls(config: &Config) -> [String; 4] {
    let k = &config.klaviyo;
    [&k.auth_url, &k.token_url, &k.revoke_url, &k.api_url].map(|url| url.to_string())
}

/// Klaviyo endpoints somewhere else (nothing listens there: the stack must not call them at start).
const ELSEWHERE: [(&str, &str); 4] = [
    (
        "KLAVIYO_AUTH_URL",
        "http://127.0.0.1:9/klaviyo/oauth/authorize",
    ),
    (
        "KLAVIYO_TOKEN_URL",
        "http://127.0.0.1:9/klaviyo/oauth/token",
    ),
    (
        "KLAVIYO_REVOKE_URL",
        "http://127.0.0.1:9/klaviyo/oauth/revoke",
    ),
    ("KLAVIYO_API_URL", "http://127.0.0.1:9/klaviyo"),
];
/// The client credentials of that other Klaviyo.
const CREDENTIALS: [(&str, &str); 2] = [
    ("KLAVIYO_CLIENT_ID", "elsewhere-client"),
    ("KLAVIYO_CLIENT_SECRET", "elsewhere-secret-0123456789"),
];

#[tokio::test]
async fn with_nothing_set_both_simulators_run_and_the_app_points_at_them() {
    let stack = start(&[]).await;
    let klaviyo = stack.klaviyo.as_ref().expect("a Klaviyo simulator");
    let omneo = stack.omneo.as_ref().expect("an Omneo simulator");
    let config = &stack.app.config;

    let sim = klaviyo.url();
    assert_eq!(
        klaviyo_urls(config),
        [
            format!("{sim}/oauth/authorize"),
            format!("{sim}/oauth/token"),
            format!("{sim}/oauth/revoke"),
            format!("{sim}/"),
        ]
    );
    assert_eq!(config.klaviyo.client_id, DEV_CLIENT_ID);
    assert_eq!(config.klaviyo.client_id, klaviyo.options().client_id);
    assert_eq!(
        config.klaviyo.client_secret.expose_secret(),
        klaviyo.options().client_secret
    );
    assert_eq!(config.omneo_api_url_template, omneo.api_url_template());

    // PORT=0: the app's port is the one bound, and the simulators are on free ports of their own.
    let port = config.port;
    assert_ne!(port, 0);
    assert_eq!(stack.url, format!("http://localhost:{port}"));
    assert_eq!(
        config.urls.oauth_callback.as_str(),
        format!("{}/", stack.url)
    );
    assert_ne!(klaviyo.addr().port(), omneo.addr().port());
    let health = http()
        .get(format!("{}/health", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        stack
            .guide
            .contains(&format!("Klaviyo      {} (simulator", klaviyo.url()))
    );
    assert!(
        stack
            .guide
            .contains(&format!("Omneo        {}/demo (simulator", omneo.url()))
    );
}

#[tokio::test]
async fn klaviyo_urls_set_elsewhere_start_no_klaviyo_simulator() {
    let vars: Vec<_> = ELSEWHERE.iter().chain(&CREDENTIALS).copied().collect();
    let stack = start(&vars).await;
    let config = &stack.app.config;

    assert!(stack.klaviyo.is_none(), "no Klaviyo simulator");
    assert_eq!(
        klaviyo_urls(config),
        ELSEWHERE.map(|(_, url)| url.to_owned())
    );
    assert_eq!(config.klaviyo.client_id, "elsewhere-client");
    let omneo = stack
        .omneo
        .as_ref()
        .expect("the Omneo simulator still runs");
    assert_eq!(config.omneo_api_url_template, omneo.api_url_template());
    assert!(
        stack
            .guide
            .contains("Klaviyo      http://127.0.0.1:9/klaviyo (configured)"),
        "{}",
        stack.guide
    );
    assert!(
        !stack.guide.contains("/_sim/faults"),
        "no simulated Klaviyo to poke"
    );
    // The sync walk-through points at the configured Klaviyo for step 3, with no command for it.
    assert!(
        stack
            .guide
            .contains("the profile is in the Klaviyo account at http://127.0.0.1:9/klaviyo"),
        "{}",
        stack.guide
    );
    assert_eq!(
        guide_commands(&stack.guide, "Sync Omneo → Klaviyo").len(),
        3
    );
    // The way back: the unsubscribe is made in that Klaviyo, so no command for it or a delivery;
    // reading Omneo and the Flow webhook are the same.
    assert!(
        stack
            .guide
            .contains("email marketing in the Klaviyo account at http://127.0.0.1:9/klaviyo"),
        "{}",
        stack.guide
    );
    assert_eq!(
        guide_commands(&stack.guide, "Sync Klaviyo → Omneo").len(),
        4
    );

    // The install link leads to the configured authorize page.
    let authorize = follow_install_link(&stack).await;
    assert!(
        authorize.starts_with(&format!("{}?", ELSEWHERE[0].1)),
        "{authorize}"
    );
}

#[tokio::test]
async fn any_one_klaviyo_url_set_means_no_klaviyo_simulator() {
    for (name, value) in ELSEWHERE {
        let stack = start(&[(name, value), CREDENTIALS[0], CREDENTIALS[1]]).await;
        assert!(stack.klaviyo.is_none(), "{name} set");
        assert!(stack.omneo.is_some(), "{name} set");
    }
}

#[tokio::test]
async fn without_a_simulator_the_klaviyo_credentials_must_be_configured() {
    let error = LocalStack::start(
        &|name: &str| match name {
            "PORT" => Some("0".to_owned()),
            "KLAVIYO_API_URL" => Some(ELSEWHERE[3].1.to_owned()),
            _ => None,
        },
        |_| Ok(()),
    )
    .await
    .err()
    .expect("no client id");
    assert_eq!(
        error.to_string(),
        "missing required environment variable KLAVIYO_CLIENT_ID"
    );
}

#[tokio::test]
async fn an_omneo_template_set_starts_no_omneo_simulator() {
    let template = "http://127.0.0.1:9/omneo/{tenant}";
    let stack = start(&[("OMNEO_API_URL_TEMPLATE", template)]).await;

    assert!(stack.omneo.is_none(), "no Omneo simulator");
    assert_eq!(stack.app.config.omneo_api_url_template, template);
    let klaviyo = stack
        .klaviyo
        .as_ref()
        .expect("the Klaviyo simulator still runs");
    assert_eq!(
        stack.app.config.klaviyo.api_url.as_str(),
        format!("{}/", klaviyo.url())
    );
    let demo = stack
        .app
        .store
        .tenant(&TenantId::parse(DEMO_TENANT).unwrap())
        .await
        .unwrap()
        .expect("the demo tenant is registered all the same");
    assert_eq!(demo.omneo_api_url, "http://127.0.0.1:9/omneo/demo");
    assert!(
        stack
            .guide
            .contains(&format!("Omneo        {template} (configured)")),
        "{}",
        stack.guide
    );
    for section in ["Sync Omneo → Klaviyo", "Sync Klaviyo → Omneo"] {
        assert!(
            !stack.guide.contains(section),
            "no simulated Omneo to edit or read: {}",
            stack.guide
        );
    }
}

#[tokio::test]
async fn the_demo_tenant_installs_through_the_printed_link() {
    let stack = start(&[]).await;
    let klaviyo = stack.klaviyo.as_ref().unwrap();
    let omneo = stack.omneo.as_ref().unwrap();
    let admin_key = stack.admin_key.expose_secret();
    let status_url = format!("{}/{DEMO_TENANT}/api/v1/install", stack.url);
    let status = |bearer: &str| {
        http()
            .request(Method::GET, &status_url)
            .bearer_auth(bearer)
            .send()
    };

    // Registered, not installed, with its customers in the simulated Omneo.
    let response = status(admin_key).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(status("not-the-admin-key").await.unwrap().status(), 401);
    assert_eq!(omneo.profiles(DEMO_TENANT).len(), DEMO_PROFILES as usize);

    // The printed link → Klaviyo's consent page → Allow → the callback page → installed.
    assert!(stack.guide.contains(stack.install_link.as_str()));
    assert!(stack.guide.contains(admin_key));
    assert!(
        stack.install_link.as_str().starts_with(&format!(
            "{}/oauth/install?tenant={DEMO_TENANT}&link=",
            stack.url
        )),
        "{}",
        stack.install_link
    );
    let authorize = follow_install_link(&stack).await;
    assert!(
        authorize.starts_with(&format!("{}/oauth/authorize?", klaviyo.url())),
        "{authorize}"
    );
    let consent = http().get(&authorize).send().await.unwrap();
    assert_eq!(consent.status(), 200, "the simulated consent page");
    let callback = klaviyo.approve(&authorize).await.unwrap();
    let page = http().get(callback.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Klaviyo is connected"), "{page}");
    let body: Value = status(admin_key).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "installed", "{body}");
    assert!(
        !klaviyo.webhooks().is_empty(),
        "provisioned on the simulated Klaviyo"
    );
}

#[tokio::test]
async fn a_generated_operator_token_is_printed() {
    let stack = start(&[]).await;
    let token = stack.app.config.operator_token.expose_secret();
    assert!(
        stack.guide.contains(&format!("operator     {token}")),
        "{}",
        stack.guide
    );
    let response = http()
        .get(format!("{}/{DEMO_TENANT}/api/v1/install", stack.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the printed token is the operator's"
    );
}

#[tokio::test]
async fn secrets_from_the_environment_are_never_printed() {
    let operator_token = "operator-token-from-the-environment";
    let keyring = new_keyring_spec("env");
    let keyring = keyring.expose_secret();
    let client_secret = "client-secret-from-the-environment";
    let stack = start(&[
        ("OPERATOR_TOKEN", operator_token),
        ("ENCRYPTION_KEY", keyring),
        ("KLAVIYO_CLIENT_SECRET", client_secret),
    ])
    .await;

    // They are in use …
    assert_eq!(
        stack.app.config.operator_token.expose_secret(),
        operator_token
    );
    assert_eq!(stack.app.config.keyring.active_key_id(), "env");
    let klaviyo = stack.klaviyo.as_ref().unwrap();
    assert_eq!(
        klaviyo.options().client_secret,
        client_secret,
        "the simulator accepts it"
    );
    // … and nowhere in the guide, which says where the operator token comes from instead.
    let key = keyring.split_once(':').unwrap().1;
    for secret in [operator_token, keyring, key, client_secret] {
        assert!(
            !stack.guide.contains(secret),
            "{secret} printed:\n{}",
            stack.guide
        );
    }
    assert!(
        stack
            .guide
            .contains("operator     from OPERATOR_TOKEN (not shown)"),
        "{}",
        stack.guide
    );
    assert!(
        stack.guide.contains(stack.admin_key.expose_secret()),
        "the generated admin key is still shown"
    );
}

/// One curl command of the guide, as a shell would pass it to curl.
#[derive(Debug)]
struct Curl {
    method: Method,
    headers: Vec<(String, String)>,
    body: Option<String>,
    url: String,
}

impl Curl {
    /// Parses one command line: `curl` with `-X`, `-H`, `-d` and one URL, words split and
    /// unquoted as a POSIX shell does (single quotes, double quotes, backslashes). Anything else
    /// fails the test: the guide must only print what this runs.
    fn parse(line: &str) -> Self {
        let words = shell_words(line);
        assert_eq!(words.first().map(String::as_str), Some("curl"), "{line}");
        let mut curl = Self {
            method: Method::GET,
            headers: Vec::new(),
            body: None,
            url: String::new(),
        };
        let mut method = None;
        let mut words = words.into_iter().skip(1);
        while let Some(word) = words.next() {
            let mut value = || {
                words
                    .next()
                    .unwrap_or_else(|| panic!("{word} needs a value: {line}"))
            };
            match word.as_str() {
                "-X" => method = Some(Method::from_bytes(value().as_bytes()).unwrap()),
                "-H" => {
                    let header = value();
                    let (name, value) = header.split_once(':').expect("a header is `name: value`");
                    curl.headers
                        .push((name.trim().to_owned(), value.trim().to_owned()));
                }
                "-d" => curl.body = Some(value()),
                flag if flag.starts_with('-') => panic!("unsupported curl flag {flag}: {line}"),
                url => {
                    assert!(curl.url.is_empty(), "two URLs: {line}");
                    curl.url = url.to_owned();
                }
            }
        }
        assert!(!curl.url.is_empty(), "no URL: {line}");
        // Like curl: `-d` without `-X` is a POST.
        curl.method = method.unwrap_or(if curl.body.is_some() {
            Method::POST
        } else {
            Method::GET
        });
        curl
    }

    /// Runs it; answers the status and the JSON body (`null` when empty, as a 202's is).
    async fn run(&self) -> (u16, Value) {
        let mut request = http().request(self.method.clone(), &self.url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.expect("the guide's URL answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if text.is_empty() {
            return (status, Value::Null);
        }
        let body = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{} {} answered no JSON ({e}): {text}",
                self.method, self.url
            )
        });
        (status, body)
    }

    /// The value of one of its headers.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Runs it until `done` finds what it waits for in a 200 answer (the pipeline is
    /// asynchronous); fails after a minute, showing the last answer.
    async fn run_until<T>(&self, done: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.run().await;
            assert_eq!(status, 200, "{} {}: {body}", self.method, self.url);
            if let Some(found) = done(&body) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} {} never showed it; last answer: {body:#}",
                self.method,
                self.url
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Splits a command line into words as a POSIX shell does (no variables or globbing).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    current.push(c);
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => current.extend(chars.next()),
                        c => current.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The curl commands of the guide's section whose heading starts with `heading`, in order (the
/// section ends at the next blank line).
fn guide_commands(guide: &str, heading: &str) -> Vec<Curl> {
    guide
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .filter(|line| line.starts_with("curl "))
        .map(Curl::parse)
        .collect()
}

#[test]
fn guide_commands_are_split_like_a_shell_would() {
    let curl = Curl::parse(
        r#"curl -X PATCH -H 'content-type: application/json' -d '{"a":"b c"}' "http://x/y\"z" "#,
    );
    assert_eq!(curl.method, Method::PATCH);
    assert_eq!(
        curl.headers,
        [("content-type".to_owned(), "application/json".to_owned())]
    );
    assert_eq!(curl.body.as_deref(), Some(r#"{"a":"b c"}"#));
    assert_eq!(curl.url, r#"http://x/y"z"#);
    assert_eq!(Curl::parse("curl -d x http://x").method, Method::POST);
    assert_eq!(Curl::parse("curl http://x").method, Method::GET);
}

#[tokio::test]
async fn the_guides_sync_commands_carry_an_omneo_edit_to_klaviyo_and_back() {
    let stack = start(&[]).await;
    run_the_sync_section(&stack).await;
}

/// Installs the demo tenant through the printed link and runs the section "Sync Omneo → Klaviyo"
/// as printed, checking each step; answers the demo customer (as it was before the edit) and its
/// Klaviyo profile id.
async fn run_the_sync_section(stack: &LocalStack) -> (Profile, String) {
    let klaviyo = stack.klaviyo.as_ref().unwrap();
    let omneo = stack.omneo.as_ref().unwrap();

    // Install as the guide says: the printed link, Allow on the consent page.
    let authorize = follow_install_link(stack).await;
    let callback = klaviyo.approve(&authorize).await.unwrap();
    let page = http().get(callback.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let webhooks = omneo.webhooks(DEMO_TENANT);
    assert!(
        !webhooks.is_empty(),
        "provisioning created the Omneo webhooks"
    );
    assert!(webhooks.iter().all(|w| !w.is_active), "… switched off");

    let commands = guide_commands(&stack.guide, "Sync Omneo → Klaviyo");
    let [activate, edit, in_klaviyo, in_omneo] = commands.as_slice() else {
        panic!("four commands expected:\n{}", stack.guide);
    };
    let customer = omneo.profiles(DEMO_TENANT).swap_remove(0);
    assert!(
        stack.guide.contains(&format!(
            "demo customer {} {}, {}",
            customer.first_name.as_deref().unwrap(),
            customer.last_name.as_deref().unwrap(),
            customer.id
        )),
        "{}",
        stack.guide
    );

    // 1. The webhooks go on.
    let (status, body) = activate.run().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"].as_array().map(Vec::len),
        Some(webhooks.len()),
        "{body}"
    );
    assert!(omneo.webhooks(DEMO_TENANT).iter().all(|w| w.is_active));

    // 2. The edit: a new first name, SMS marketing on (the first demo customer has it off).
    assert!(
        edit.url.ends_with(&format!("/profiles/{}", customer.id)),
        "{}",
        edit.url
    );
    let asked: Value = serde_json::from_str(edit.body.as_deref().unwrap()).unwrap();
    let first_name = asked["first_name"]
        .as_str()
        .expect("a first name")
        .to_owned();
    assert_ne!(customer.first_name.as_deref(), Some(first_name.as_str()));
    assert_eq!(asked["comms"]["sms_promo"], true);
    assert_eq!(customer.attributes.comms.sms_promo, Some(false));
    let (status, body) = edit.run().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["first_name"], first_name.as_str());
    assert_eq!(body["data"]["attributes"]["comms"]["sms_promo"], true);

    // 3. Klaviyo gets the profile: the new name, SMS consent from Omneo.
    let klaviyo_profile = in_klaviyo
        .run_until(|profiles| {
            profiles
                .as_array()?
                .iter()
                .find(|p| {
                    p["external_id"] == customer.id.as_str()
                        && p["first_name"] == first_name.as_str()
                        && p["subscriptions"]["sms_marketing"]["consent"] == "SUBSCRIBED"
                })
                .cloned()
        })
        .await;
    let sms = &klaviyo_profile["subscriptions"]["sms_marketing"];
    assert_eq!(sms["custom_method_detail"], "omneo", "{klaviyo_profile:#}");
    assert_eq!(klaviyo_profile["email"], customer.email.as_deref().unwrap());
    assert_eq!(
        klaviyo_profile["subscriptions"]["email_marketing"]["consent"],
        "SUBSCRIBED"
    );
    let klaviyo_id = klaviyo_profile["id"].as_str().unwrap().to_owned();

    // 4. Omneo gets the Klaviyo id back as the `klaviyo` identity.
    let identity = in_omneo
        .run_until(|profile| {
            profile["data"]["identities"]
                .as_array()?
                .iter()
                .find(|i| i["handle"] == "klaviyo")
                .map(|i| i["identifier"].clone())
        })
        .await;
    assert_eq!(identity, klaviyo_id.as_str());
    (customer, klaviyo_id)
}

/// An Omneo time, `YYYY-MM-DD HH:MM:SS` UTC.
fn omneo_time(text: &str) -> jiff::Timestamp {
    jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
        .unwrap_or_else(|e| panic!("{text} is no Omneo time: {e}"))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
}

#[tokio::test]
async fn the_guides_klaviyo_commands_carry_an_unsubscribe_and_a_reward_to_omneo() {
    let stack = start(&[]).await;
    let omneo = stack.omneo.as_ref().unwrap();
    let (customer, klaviyo_id) = run_the_sync_section(&stack).await;
    let before = customer.attributes.comms.clone();
    assert_eq!(before.email_promo, Some(true), "{before:?}");
    let email = customer.email.as_deref().unwrap();
    let started = jiff::Timestamp::now();

    let commands = guide_commands(&stack.guide, "Sync Klaviyo → Omneo");
    let [unsubscribe, deliver, comms, interactions, reward, rewards] = commands.as_slice() else {
        panic!("six commands expected:\n{}", stack.guide);
    };
    assert!(
        stack.guide.contains(&format!(
            "Sync Klaviyo → Omneo (after the sync above) — the same customer, {email}:"
        )),
        "{}",
        stack.guide
    );

    // 1. The customer unsubscribes on Klaviyo's side: the event waits in Klaviyo's outbox.
    let (status, pending) = unsubscribe.run().await;
    assert_eq!(status, 200, "{pending}");
    let unsubscribed = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["topic"] == topics::UNSUBSCRIBED_FROM_EMAIL)
        .unwrap_or_else(|| panic!("no unsubscribe queued: {pending:#}"));
    assert_eq!(unsubscribed["profile_id"], klaviyo_id.as_str());
    assert_eq!(unsubscribed["method"], "PREFERENCE_PAGE");
    let event_id = unsubscribed["event_id"].as_str().unwrap().to_owned();

    // 2. Klaviyo delivers it to the tenant's system webhook, which accepts it (202).
    let (status, deliveries) = deliver.run().await;
    assert_eq!(status, 200, "{deliveries}");
    let delivery = deliveries
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id.as_str()))
        })
        .unwrap_or_else(|| panic!("the unsubscribe was not delivered: {deliveries:#}"));
    assert!(
        delivery["endpoint_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{DEMO_TENANT}/api/v1/webhooks/klaviyo/system")),
        "{delivery}"
    );
    assert_eq!(delivery["status"], 202, "{delivery}");

    // 3. Omneo's comms: email marketing off, its consent time now; SMS as the sync left it.
    assert!(comms.url.ends_with(&format!("/profiles/{}", customer.id)));
    let after = comms
        .run_until(|profile| {
            let comms = &profile["data"]["attributes"]["comms"];
            (comms["email_promo"] == false).then(|| comms.clone())
        })
        .await;
    let consent_at = after["email_consent_updated_at"].as_str().unwrap();
    assert_ne!(
        Some(consent_at),
        before.email_consent_updated_at.as_deref(),
        "{after:#}"
    );
    let consent_at = omneo_time(consent_at);
    assert!(
        consent_at.as_second() >= started.as_second() - 1 && consent_at <= jiff::Timestamp::now(),
        "{consent_at} is the unsubscribe's time"
    );
    assert_eq!(after["sms_promo"], true, "{after:#}");

    // 4. One interaction recording it, negative.
    let recorded = interactions
        .run_until(|list| {
            let list = list["data"].as_array()?;
            (!list.is_empty()).then(|| list.clone())
        })
        .await;
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    let interaction = &recorded[0];
    assert_eq!(interaction["profile_id"], customer.id.as_str());
    assert_eq!(interaction["signal"], -1);
    assert_eq!(interaction["action"], "disclose");
    assert_eq!(interaction["channel"], "email");
    assert_eq!(
        interaction["name"],
        "Klaviyo: unsubscribed from email marketing"
    );

    // 5. A Flow webhook: the tenant's webhook secret, the customer's email; accepted twice, as
    //    Klaviyo's retries would be.
    let tenant = stack
        .app
        .store
        .tenant(&TenantId::parse(DEMO_TENANT).unwrap())
        .await
        .unwrap()
        .unwrap();
    let secret = tenant
        .open(&stack.app.config.keyring, TenantSecret::WebhookSecret)
        .unwrap();
    assert_eq!(
        reward.header("x-omneo-secret"),
        Some(secret.expose_secret())
    );
    assert_eq!(
        reward.url,
        format!(
            "{}/{DEMO_TENANT}/api/v1/webhooks/klaviyo/rewards",
            stack.url
        )
    );
    let call: Value = serde_json::from_str(reward.body.as_deref().unwrap()).unwrap();
    assert_eq!(call["email"], email);
    assert!(call["idempotency_key"].is_string(), "{call}");
    let definition = call["data"]["reward_definition_id"].clone();
    let amount = call["data"]["amount"].as_f64().expect("an amount");
    for _ in 0..2 {
        let (status, body) = reward.run().await;
        assert_eq!(status, 202, "{body}");
    }

    // 6. One reward of that amount, initial = remaining, beside the demo's seeded ones.
    let is_flow_reward = |r: &Value| {
        r["profile_id"] == customer.id.as_str() && r["reward_definition_id"] == definition
    };
    rewards
        .run_until(|list| {
            list["data"]
                .as_array()?
                .iter()
                .find(|r| is_flow_reward(r))
                .cloned()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, list) = rewards.run().await;
    assert_eq!(status, 200);
    let issued: Vec<&Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| is_flow_reward(r))
        .collect();
    assert_eq!(issued.len(), 1, "issued once: {list:#}");
    assert_eq!(issued[0]["value_initial"], amount);
    assert_eq!(issued[0]["value_remaining"], amount);
    assert_eq!(
        omneo.rewards(DEMO_TENANT).len(),
        DEMO_PROFILES as usize + 1,
        "the seeded ones and this one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guides_backfill_commands_import_the_demo_customers_and_show_reconciliation() {
    let stack = start(&[]).await;
    let klaviyo = stack.klaviyo.as_ref().unwrap();
    let authorize = follow_install_link(&stack).await;
    let callback = klaviyo.approve(&authorize).await.unwrap();
    let page = http().get(callback.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 200);

    let commands = guide_commands(&stack.guide, "Backfill and reconciliation");
    let [start_run, progress, every_minute, status] = commands.as_slice() else {
        panic!("four commands expected:\n{}", stack.guide);
    };

    // 1. The backfill starts.
    let (code, run) = start_run.run().await;
    assert_eq!(code, 202, "{run}");
    assert_eq!(run["state"], "running");

    // 2. It completes: every demo customer imported through a bulk job, none per profile.
    let run = progress
        .run_until(|run| (run["state"] != "running").then(|| run.clone()))
        .await;
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["counts"]["read"], DEMO_PROFILES, "{run}");
    assert_eq!(run["counts"]["imported"], DEMO_PROFILES, "{run}");
    assert_eq!(klaviyo.profiles().len(), DEMO_PROFILES as usize);
    assert!(!klaviyo.bulk_jobs().is_empty());
    assert!(
        klaviyo
            .recorder()
            .matching("POST", "/api/profile-import")
            .is_empty()
    );

    // 3. Reconciliation every minute; 4. once the timer swept, the status shows its results.
    let (code, settings) = every_minute.run().await;
    assert_eq!(code, 200, "{settings}");
    assert_eq!(settings["reconcile_interval_minutes"], 1);
    shared::reconcile::sweep(&stack.app, jiff::Timestamp::now())
        .await
        .unwrap();
    let reconciliation = status
        .run_until(|install| {
            let reconciliation = &install["reconciliation"];
            (!reconciliation["inbound"]["last"].is_null()
                && !reconciliation["outbound"]["last"].is_null())
            .then(|| reconciliation.clone())
        })
        .await;
    assert_eq!(reconciliation["interval_minutes"], 1);
    assert_eq!(reconciliation["status"], "on", "{reconciliation}");
    assert_eq!(reconciliation["inbound"]["last"]["status"], "succeeded");
}

#[tokio::test]
async fn the_stack_serves_the_openapi_document_the_guide_points_at() {
    let stack = start(&[]).await;
    let url = format!("{}/openapi.json", stack.url);
    assert!(stack.guide.contains(&url), "{}", stack.guide);
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert_eq!(text, include_str!("../../docs/openapi.json"));
    let document: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert_eq!(document["openapi"], "3.1.0");
}
