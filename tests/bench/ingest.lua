-- The wrk script of `make bench`'s ingest benchmark (tests/src/bin/bench-ingest.rs), for both
-- receivers.
--
-- Arguments after `--`: the requests file and the request path. Each line of the file is one
-- request: tab-separated `Name: value` headers, then the JSON body as the last field (compact JSON
-- holds no raw tab). Omneo lines carry `X-Omneo-Event` and `X-Omneo-Hmac-SHA256`; Klaviyo lines
-- `Klaviyo-Webhook-Id`, `Klaviyo-Timestamp` and `Klaviyo-Signature`. Each thread cycles through the
-- pre-formatted requests. done() prints one line the benchmark reads:
-- `BENCH requests=… duration_us=… p50_us=… p99_us=… non2xx=… socket_errors=…`.

local prepared = {}
local turn = 0

function init(args)
   local requests, path = args[1], args[2]
   if requests == nil or path == nil then
      error("usage: wrk … -s ingest.lua <url> -- <requests file> <path>")
   end
   for line in io.lines(requests) do
      local fields = {}
      for field in line:gmatch("[^\t]+") do
         fields[#fields + 1] = field
      end
      local headers = { ["Content-Type"] = "application/json" }
      for i = 1, #fields - 1 do
         local name, value = fields[i]:match("^([%w-]+): (.+)$")
         if name == nil then
            error("not a `Name: value` header: " .. fields[i]:sub(1, 80))
         end
         headers[name] = value
      end
      if #fields < 2 then
         error("not `<headers>\\t<body>`: " .. line:sub(1, 80))
      end
      prepared[#prepared + 1] = wrk.format("POST", path, headers, fields[#fields])
   end
   if #prepared == 0 then
      error("no requests in " .. requests)
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
