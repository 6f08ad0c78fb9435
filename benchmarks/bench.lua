-- wrk script of the benchmark harness (benchmarks/load.py runs it).
--
-- Always: done() prints one line "BENCH_JSON {...}" with wrk's own totals, latency percentiles
-- (microseconds) and error counts, so nothing has to be scraped from wrk's text output.
--
-- With BENCH_SLOW_EVERY=N (N > 0), the mixed workload: every Nth request is GET /slow, the
-- others GET /. wrk's latency histogram mixes both, so each request carries its route and its
-- send time (CLOCK_MONOTONIC, microseconds) in an X-Bench-Id header that the app echoes back
-- (benchmarks/apps.py); response() turns the echo into a latency sample for its route. request()
-- runs right before wrk writes the request, response() right after the whole response arrived.
-- request() and response() are only defined in this mode: wrk is fastest without them.

local slow_every = tonumber(os.getenv("BENCH_SLOW_EVERY") or "0")

local function percentile(sorted, p)
  local n = #sorted
  if n == 0 then return 0 end
  return sorted[math.max(1, math.ceil(p / 100 * n))]
end

local function route_json(samples, errors)
  table.sort(samples)
  return string.format('{"requests":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":%d}',
    #samples, percentile(samples, 50), percentile(samples, 99), percentile(samples, 100), errors)
end

if slow_every > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local CLOCK_MONOTONIC = 1

  local function now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
  end

  -- per wrk thread; done() collects them with thread:get()
  fast_samples, slow_samples, fast_errors, slow_errors, unmatched = {}, {}, 0, 0, 0
  local sent = 0

  request = function()
    sent = sent + 1
    if sent % slow_every == 0 then
      return wrk.format("GET", "/slow", { ["X-Bench-Id"] = "s" .. now_us() })
    end
    return wrk.format("GET", "/", { ["X-Bench-Id"] = "f" .. now_us() })
  end

  response = function(status, headers, body)
    local id = headers["X-Bench-Id"] or headers["x-bench-id"]
    if id == nil then
      unmatched = unmatched + 1
      return
    end
    local latency = now_us() - tonumber(id:sub(2))
    local bad = (status < 200 or status > 299) and 1 or 0
    if id:sub(1, 1) == "s" then
      slow_samples[#slow_samples + 1] = latency
      slow_errors = slow_errors + bad
    else
      fast_samples[#fast_samples + 1] = latency
      fast_errors = fast_errors + bad
    end
  end
end

local threads = {}

setup = function(thread)
  threads[#threads + 1] = thread
end

done = function(summary, latency, requests)
  local e = summary.errors
  local routes = ""
  if slow_every > 0 then
    local fast, slow, fast_err, slow_err, lost = {}, {}, 0, 0, 0
    for _, thread in ipairs(threads) do
      for _, v in ipairs(thread:get("fast_samples")) do fast[#fast + 1] = v end
      for _, v in ipairs(thread:get("slow_samples")) do slow[#slow + 1] = v end
      fast_err = fast_err + thread:get("fast_errors")
      slow_err = slow_err + thread:get("slow_errors")
      lost = lost + thread:get("unmatched")
    end
    routes = string.format(',"unmatched":%d,"routes":{"fast":%s,"slow":%s}',
      lost, route_json(fast, fast_err), route_json(slow, slow_err))
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, e.status, routes))
end
