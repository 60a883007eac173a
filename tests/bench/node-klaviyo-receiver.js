// The Node.js reference of the klaviyo-webhook rows of `make bench`'s ingest benchmark
// (tests/src/bin/bench-ingest.rs): a plain `http` server (no npm dependencies) doing the work the
// klaviyo-webhook receiver does with a system-webhook batch, the idiomatic Node way:
//   POST /{tenant}/api/v1/webhooks/klaviyo/system → look up the tenant, read the raw body (at most
//   256 KiB, like the Rust runtime), verify Klaviyo-Signature (hex HMAC-SHA256 of the raw body
//   followed by the Klaviyo-Timestamp header's bytes) with crypto.timingSafeEqual, JSON.parse,
//   check that Klaviyo-Webhook-Id = meta.klaviyo_webhook_id = the tenant's webhook,
//   meta.klaviyo_account_id = the tenant's account and meta.timestamp within 5 minutes of now,
//   check each event's fields, group the events of the topics acted on by Klaviyo profile, push
//   one task per profile onto an in-memory array (its "enqueue") and answer 202 with an empty
//   body. A task is named from its events' sorted external_ids and, like the Rust receiver's
//   queue, the array takes a name once: a redelivered batch (the benchmark's pool recurs) adds
//   nothing, so the array stays as small as the Rust queue and its garbage collection costs
//   what the Rust side's would.
// GET /health answers 200 (the benchmark waits for it). Environment: PORT, BENCH_TENANT,
// BENCH_KLAVIYO_WEBHOOK_SECRET, BENCH_KLAVIYO_WEBHOOK_ID, BENCH_KLAVIYO_ACCOUNT_ID. On SIGTERM
// it prints `queued=<tasks>` on stderr and exits.
'use strict';

const crypto = require('node:crypto');
const { answer, serve } = require('./node-serve.js');

const MAX_DELIVERY_AGE_MS = 5 * 60 * 1000;
const WEBHOOK_PATH = /^\/([^/]+)\/api\/v1\/webhooks\/klaviyo\/system$/;
const PROFILE_ID = /^[A-Za-z0-9]{1,64}$/;
// The topics the extension acts on (events of any other topic make no task).
const TOPICS = new Set([
  'event:klaviyo.bounced_email',
  'event:klaviyo.failed_to_deliver_sms',
  'event:klaviyo.marked_email_as_spam',
  'event:klaviyo.subscribed_to_email_marketing',
  'event:klaviyo.unsubscribed_from_email_marketing',
  'event:klaviyo.subscribed_to_sms_marketing',
  'event:klaviyo.unsubscribed_from_sms_marketing',
  'event:klaviyo.subscribed_to_list',
  'event:klaviyo.unsubscribed_from_list',
  'event:klaviyo.manually_suppressed_from_email_marketing',
  'event:klaviyo.manually_unsuppressed_from_email_marketing',
]);

for (const name of [
  'PORT',
  'BENCH_TENANT',
  'BENCH_KLAVIYO_WEBHOOK_SECRET',
  'BENCH_KLAVIYO_WEBHOOK_ID',
  'BENCH_KLAVIYO_ACCOUNT_ID',
]) {
  if (!process.env[name]) {
    process.stderr.write(`${name} must be set\n`);
    process.exit(2);
  }
}
const tenants = new Map([
  [
    process.env.BENCH_TENANT,
    {
      secret: Buffer.from(process.env.BENCH_KLAVIYO_WEBHOOK_SECRET),
      webhookId: process.env.BENCH_KLAVIYO_WEBHOOK_ID,
      accountId: process.env.BENCH_KLAVIYO_ACCOUNT_ID,
    },
  ],
]);
const queue = [];
const queued = new Set();


const isText = (value) => typeof value === 'string';
const optionalText = (value) => value === undefined || value === null || isText(value);

// One batch entry as a consent event of `profile`, or a string saying what is wrong with it.
function consentEvent(entry) {
  if (entry === null || typeof entry !== 'object') return 'data[] is not an object';
  if (!isText(entry.topic) || !isText(entry.external_id)) return 'topic or external_id';
  const event = entry.payload && entry.payload.data;
  if (event === null || typeof event !== 'object' || !isText(event.id)) return 'payload.data.id';
  const attributes = event.attributes;
  if (attributes === null || typeof attributes !== 'object') return 'attributes';
  const at = isText(attributes.datetime) ? Date.parse(attributes.datetime) : NaN;
  if (Number.isNaN(at)) return 'attributes.datetime';
  const properties = attributes.event_properties || {};
  for (const field of [
    'email_address',
    'method',
    'method_detail',
    'custom_method_detail',
    'list_id',
  ]) {
    if (!optionalText(properties[field])) return `event_properties.${field}`;
  }
  const related = event.relationships && event.relationships.profile;
  const profile = related && related.data && related.data.id;
  if (!isText(profile) || !PROFILE_ID.test(profile)) return 'relationships.profile.data.id';
  return {
    profile,
    email: properties.email_address,
    event: {
      id: event.id,
      topic: entry.topic,
      at,
      method: properties.method,
      method_detail: properties.method_detail,
      custom_method_detail: properties.custom_method_detail,
      list_id: properties.list_id,
    },
  };
}

function receive(req, res, tenantId, body) {
  const tenant = tenants.get(tenantId);
  if (tenant === undefined) {
    return answer(res, 404, { error: 'unknown tenant' });
  }
  const timestamp = req.headers['klaviyo-timestamp'];
  if (timestamp === undefined) {
    return answer(res, 401, { error: 'missing Klaviyo-Timestamp header' });
  }
  const given = Buffer.from(req.headers['klaviyo-signature'] || '', 'hex');
  const expected = crypto
    .createHmac('sha256', tenant.secret)
    .update(body)
    .update(timestamp)
    .digest();
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return answer(res, 401, { error: 'invalid signature' });
  }
  let delivery;
  try {
    delivery = JSON.parse(body.toString('utf8'));
  } catch {
    return answer(res, 400, { error: 'body is not JSON' });
  }
  const meta = delivery && delivery.meta;
  if (meta === null || typeof meta !== 'object' || !Array.isArray(delivery.data)) {
    return answer(res, 400, { error: 'body has no data[] and meta' });
  }
  const headerId = (req.headers['klaviyo-webhook-id'] || '').trim();
  if (headerId !== meta.klaviyo_webhook_id || meta.klaviyo_webhook_id !== tenant.webhookId) {
    return answer(res, 401, { error: 'not the tenant\'s Klaviyo webhook' });
  }
  if (meta.klaviyo_account_id !== tenant.accountId) {
    return answer(res, 401, { error: 'not the tenant\'s Klaviyo account' });
  }
  const sent = isText(meta.timestamp) ? Date.parse(meta.timestamp) : NaN;
  if (Number.isNaN(sent) || Math.abs(Date.now() - sent) > MAX_DELIVERY_AGE_MS) {
    return answer(res, 401, { error: 'meta.timestamp is not within 5 minutes of now' });
  }

  const batches = new Map();
  for (const entry of delivery.data) {
    const parsed = consentEvent(entry);
    if (typeof parsed === 'string') {
      return answer(res, 400, { error: `invalid field ${parsed}` });
    }
    if (!TOPICS.has(entry.topic) || parsed.event.custom_method_detail === 'omneo') {
      continue;
    }
    let batch = batches.get(parsed.profile);
    if (batch === undefined) {
      batch = { email: undefined, events: [], externalIds: [] };
      batches.set(parsed.profile, batch);
    }
    if (batch.email === undefined && isText(parsed.email) && parsed.email.trim() !== '') {
      batch.email = parsed.email;
    }
    batch.events.push(parsed.event);
    batch.externalIds.push(entry.external_id);
  }
  const receivedAt = Date.now();
  for (const [profile, batch] of batches) {
    batch.externalIds.sort();
    const name = `klaviyo-events/${tenantId}/${profile}/${batch.externalIds.join('/')}`;
    if (queued.has(name)) {
      continue;
    }
    queued.add(name);
    queue.push({
      tenant: tenantId,
      name,
      klaviyo_profile_id: profile,
      email: batch.email,
      events: batch.events,
      received_at: receivedAt,
    });
  }
  return answer(res, 202);
}

serve(WEBHOOK_PATH, receive, queue);
