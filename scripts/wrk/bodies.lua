-- wrk script for Errand's benchmarks (scripts/bench_http.py, scripts/bench_expiry.py).
--
-- Sends POST requests whose form bodies were written beforehand, one body per line:
--   wrk -t T -c C -d D --latency -s scripts/wrk/bodies.lua URL -- PATH PREFIX CYCLE [AUTHORIZATION]
-- Thread n (1-based) reads the file PREFIX.n. With CYCLE=0 each body is sent at most once
-- (token exchange: a subject token's jti is single-use); a thread that has used up its file
-- sends GET /healthz instead and counts those as `exhausted`; with CYCLE=1 the bodies repeat
-- (introspection of a pool of live access tokens).
-- done() prints one line `WRKJSON {...}` with latencies in microseconds.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local prefix = args[2]
  cycle = args[3] == "1"
  local auth = args[4]
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  if auth ~= nil and auth ~= "" then
    headers["Authorization"] = auth
  end
  -- Pre-format every request once, so request() is a table lookup.
  reqs = {}
  for line in io.lines(prefix .. "." .. id) do
    if line ~= "" then
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
  end
  -- Sent once the single-use bodies are used up: harmless, and never a replayed token.
  spare = wrk.format("GET", "/healthz")
  n = 0
  exhausted = 0
end

function request()
  if id == 1 and not verified then
    -- wrk calls request() once on the first thread to check for pipelining and never sends
    -- that request: give it the spare, so no single-use body is lost.
    verified = true
    return spare
  end
  n = n + 1
  if n > #reqs then
    if cycle then
      n = 1
    else
      -- Out of single-use bodies: send the spare request rather than a replayed token, and
      -- keep the connections busy. (Stopping the thread would leave sockets connected with no
      -- request, and each pins a gunicorn sync worker in recv() until its 30 s timeout.)
      exhausted = exhausted + 1
      return spare
    end
  end
  return reqs[n]
end

function done(summary, latency, requests)
  local short = 0
  for _, t in ipairs(threads) do
    short = short + (tonumber(t:get("exhausted")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"exhausted":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, short))
end
