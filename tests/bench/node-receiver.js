// The Node.js reference of `make bench`'s ingest benchmark (tests/src/bin/bench-ingest.rs): a
// plain `http` server (no npm dependencies) doing the work the omneo-webhook receiver does with a
// profile delivery, the idiomatic Node way:
//   POST /{tenant}/api/v1/webhooks/omneo → look up the tenant's signing secret, read the raw body
//   (at most 256 KiB, like the Rust runtime), verify X-Omneo-Hmac-SHA256 with
//   crypto.timingSafeEqual, JSON.parse, check the event and the profile id, push a task onto an
//   in-memory array (its "enqueue") and answer 202 with a small JSON body.
// GET /health answers 200 (the benchmark waits for it). Environment: PORT, BENCH_TENANT,
// BENCH_OMNEO_SIGNING_SECRET. On SIGTERM it prints `queued=<tasks>` on stderr and exits.
'use strict';

const crypto = require('node:crypto');
const { answer, serve } = require('./node-serve.js');

const WEBHOOK_PATH = /^\/([^/]+)\/api\/v1\/webhooks\/omneo$/;
const PROFILE_EVENTS = new Set(['profile.created', 'profile.updated']);

for (const name of ['PORT', 'BENCH_TENANT', 'BENCH_OMNEO_SIGNING_SECRET']) {
  if (!process.env[name]) {
    process.stderr.write(`${name} must be set\n`);
    process.exit(2);
  }
}
const signingSecrets = new Map([
  [process.env.BENCH_TENANT, Buffer.from(process.env.BENCH_OMNEO_SIGNING_SECRET)],
]);
const queue = [];


function receive(req, res, tenant, body) {
  const secret = signingSecrets.get(tenant);
  if (secret === undefined) {
    return answer(res, 404, { error: 'unknown tenant' });
  }
  const given = Buffer.from(req.headers['x-omneo-hmac-sha256'] || '', 'hex');
  const expected = crypto.createHmac('sha256', secret).update(body).digest();
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return answer(res, 401, { error: 'invalid signature' });
  }
  const event = req.headers['x-omneo-event'];
  if (!PROFILE_EVENTS.has(event)) {
    return answer(res, 202, { status: 'ignored' });
  }
  let profile;
  try {
    profile = JSON.parse(body.toString('utf8'));
  } catch {
    return answer(res, 400, { error: 'body is not JSON' });
  }
  if (profile === null || typeof profile.id !== 'string' || profile.id === '') {
    return answer(res, 400, { error: 'body names no profile id' });
  }
  queue.push({ tenant, profile_id: profile.id, event, received_at: Date.now() });
  return answer(res, 202, { status: 'enqueued' });
}

serve(WEBHOOK_PATH, receive, queue);
