-- The wrk script of the klaviyo-webhook rows of `make bench`'s ingest benchmark
-- (tests/src/bin/bench-ingest.rs).
--
-- Arguments after `--`: the bodies file, one
-- `<lowercase hex HMAC-SHA256>\t<Klaviyo-Timestamp>\t<JSON body>` per line, the request path and
-- the Klaviyo-Webhook-Id. Every request is a signed Klaviyo system-webhook batch; each thread
-- cycles through the pre-formatted requests. done() prints one line the benchmark reads:
-- `BENCH requests=… duration_us=… p50_us=… p99_us=… non2xx=… socket_errors=…`.

local prepared = {}
local turn = 0

function init(args)
   local bodies, path, webhook_id = args[1], args[2], args[3]
   if bodies == nil or path == nil or webhook_id == nil then
      error("usage: wrk … -s klaviyo.lua <url> -- <bodies file> <path> <webhook id>")
   end
   for line in io.lines(bodies) do
      local signature, timestamp, body = line:match("^(%x+)\t([^\t]+)\t(.+)$")
      if signature == nil then
         error("not `<signature>\\t<timestamp>\\t<body>`: " .. line:sub(1, 80))
      end
      prepared[#prepared + 1] = wrk.format("POST", path, {
         ["Content-Type"] = "application/json",
         ["Klaviyo-Webhook-Id"] = webhook_id,
         ["Klaviyo-Timestamp"] = timestamp,
         ["Klaviyo-Signature"] = signature,
      }, body)
   end
   if #prepared == 0 then
      error("no requests in " .. bodies)
   end
end

function request()
   turn = turn % #prepared + 1
   return prepared[turn]
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
      summary.requests,
      summary.duration,
      latency:percentile(50),
      latency:percentile(99),
      errors.status,
      errors.connect + errors.read + errors.write + errors.timeout
   ))
end
