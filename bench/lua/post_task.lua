-- POST /tasks with a small JSON body. Optional: BENCH_LIMIT (per wrk thread) stops the
-- thread after that many responses and prints BENCH_LIMIT_REACHED, on which bench/run.py
-- sends wrk SIGINT (wrk's main thread otherwise sleeps for the whole -d duration).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"title":"bench task","description":"written by bench/run.py"}'

local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local seen = 0

if limit > 0 then
  function response(status, headers, body)
    seen = seen + 1
    if seen == limit then
      io.write("BENCH_LIMIT_REACHED\n")
      io.flush()
      wrk.thread:stop()
    end
  end
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
