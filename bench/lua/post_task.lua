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

-- The shared report, loaded from this script's own directory (wrk runs from any directory).
done = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
