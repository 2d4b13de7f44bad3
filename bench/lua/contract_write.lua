-- Writes with and without the API contract's headers, for bench/contract.py. BENCH_MODE:
--   post       POST /tasks
--   post_key   POST /tasks with a fresh Idempotency-Key per request (BENCH_PREFIX .. counter)
--   put        PUT /tasks/<id>, round-robin over BENCH_TASKS (comma-separated ids)
--   put_if     the same with If-Match: the version this script last saw of the task (from
--              the id and version in each answer's body, a 412's "current" included)
wrk.headers["Content-Type"] = "application/json"

local mode = os.getenv("BENCH_MODE") or "post"
local prefix = os.getenv("BENCH_PREFIX") or "bench-"
local ids, versions = {}, {}
for id in string.gmatch(os.getenv("BENCH_TASKS") or "", "[^,]+") do
  ids[#ids + 1] = id
  versions[id] = 1
end
local counter, turn = 0, 0
local post_body = '{"title":"bench task","description":"written by bench/contract.py"}'
local put_body = '{"description":"updated by bench/contract.py"}'

function request()
  counter = counter + 1
  if mode == "post" then
    return wrk.format("POST", "/tasks", nil, post_body)
  elseif mode == "post_key" then
    return wrk.format("POST", "/tasks", {["Idempotency-Key"] = prefix .. counter}, post_body)
  end
  turn = turn % #ids + 1
  local id = ids[turn]
  if mode == "put_if" then
    return wrk.format("PUT", "/tasks/" .. id, {["If-Match"] = '"' .. versions[id] .. '"'}, put_body)
  end
  return wrk.format("PUT", "/tasks/" .. id, nil, put_body)
end

function response(status, headers, body)
  local id, version = string.match(body, '"id":"(%x+)".-"version":(%d+)')
  if id and versions[id] then
    versions[id] = math.max(versions[id], tonumber(version))
  end
end

done = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
