// What both Node.js reference receivers of `make bench`'s ingest benchmark
// (tests/src/bin/bench-ingest.rs) share: the answer helper and the plain `http` server around
// their `receive` (no npm dependencies).
'use strict';

const http = require('node:http');

// The most body a receiver reads, like the Rust runtime.
const BODY_LIMIT_BYTES = 256 * 1024;

// Answers `status` with `body` as JSON, or with an empty body when `body` is undefined.
function answer(res, status, body) {
  if (body === undefined) {
    res.writeHead(status, { 'content-length': 0 });
    return res.end();
  }
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(json),
  });
  return res.end(json);
}

// Serves, on 127.0.0.1:$PORT, `GET /health` (200) and `POST` on `webhookPath` (whose first group
// is the tenant): the raw body, at most BODY_LIMIT_BYTES (413 beyond), goes to
// `receive(req, res, tenant, body)`. On SIGTERM it prints `queued=<queue.length>` on stderr and
// exits.
function serve(webhookPath, receive, queue) {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/health') {
      return answer(res, 200, { status: 'ok' });
    }
    const route = req.method === 'POST' ? webhookPath.exec(req.url) : null;
    if (route === null) {
      return answer(res, 404, { error: 'no such route' });
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= BODY_LIMIT_BYTES) {
        chunks.push(chunk);
      }
    });
    req.on('end', () => {
      if (size > BODY_LIMIT_BYTES) {
        return answer(res, 413, { error: 'body too large' });
      }
      return receive(req, res, route[1], Buffer.concat(chunks, size));
    });
  });
  process.on('SIGTERM', () => {
    process.stderr.write(`queued=${queue.length}\n`);
    process.exit(0);
  });
  server.listen(Number(process.env.PORT), '127.0.0.1');
}

module.exports = { answer, serve };
