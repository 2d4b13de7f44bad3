-- Writes with and without the API contract's headers, for bench/contract.py. BENCH_MODE:
--   post       POST /tasks
--   post_key   POST /tasks with a fresh Idempotency-Key per request (BENCH_PREFIX .. counter)
--   put        PUT /tasks/<id>, round-robin over BENCH_TASKS (comma-separated id:version)
--   put_if     the same with If-Match: the version this script last saw of the task (from
--              BENCH_TASKS, then the id and version of each answer, a 412's "current" included)
wrk.headers["Content-Type"] = "application/json"
local json = "application/json"  -- wrk.format() sends only the headers it is given

local mode = os.getenv("BENCH_MODE") or "post"
local prefix = os.getenv("BENCH_PREFIX") or "bench-"
local ids, versions = {}, {}
for id, version in string.gmatch(os.getenv("BENCH_TASKS") or "", "(%x+):(%d+)") do
  ids[#ids + 1] = id
  versions[id] = tonumber(version)
end
local counter, turn = 0, 0
local post_body = '{"title":"bench task","description":"written by bench/contract.py"}'
local put_body = '{"description":"updated by bench/contract.py"}'

function request()
  counter = counter + 1
  if mode == "post" then
    return wrk.format("POST", "/tasks", {["Content-Type"] = json}, post_body)
  elseif mode == "post_key" then
    return wrk.format("POST", "/tasks", {["Content-Type"] = json, ["Idempotency-Key"] = prefix .. counter}, post_body)
  end
  turn = turn % #ids + 1
  local id = ids[turn]
  if mode == "put_if" then
    return wrk.format("PUT", "/tasks/" .. id, {["Content-Type"] = json, ["If-Match"] = '"' .. versions[id] .. '"'}, put_body)
  end
  return wrk.format("PUT", "/tasks/" .. id, {["Content-Type"] = json}, put_body)
end

statuses = {}  -- a global: done() reads every thread's through thread:get()
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local id, version = string.match(body, '"id":"(%x+)".-"version":(%d+)')
  if id and versions[id] then
    versions[id] = math.max(versions[id], tonumber(version))
  end
end

local report = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")

-- The shared report; and with BENCH_STATUS_FILE, how many answers of each status went there as
-- JSON (wrk counts every status >= 400 as an error: a 412 is a lost race, a 5xx a fault).
function done(summary, latency, requests)
  report(summary, latency, requests)
  local path = os.getenv("BENCH_STATUS_FILE")
  if not path then
    return
  end
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%d":%d', status, count)
  end
  local file = io.open(path, "w")
  file:write("{" .. table.concat(parts, ",") .. "}")
  file:close()
end
