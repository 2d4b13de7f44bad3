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

-- The shared report, loaded from this script's own directory (wrk runs from any directory).
done = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
