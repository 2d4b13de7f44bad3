-- GET /tasks/<id><BENCH_SUFFIX> over the ids listed (one a line) in the file BENCH_IDS.
-- BENCH_SUFFIX is e.g. "?consistency=stale" for stale reads.
local ids = {}
local suffix = os.getenv("BENCH_SUFFIX") or ""
local n = 0
local i = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_IDS")) do
    if #line > 0 then
      n = n + 1
      ids[n] = line
    end
  end
  i = math.random(n)
end

function request()
  i = i % n + 1
  return wrk.format("GET", "/tasks/" .. ids[i] .. suffix)
end

done = function(summary, latency, requests)
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
