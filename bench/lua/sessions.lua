-- wrk script of the Stickyfarm benchmarks.
--
--   wrk ... -s bench/lua/sessions.lua URL -- COOKIE_FILE [METHOD [BODY_FILE [ORDER]]]
--
-- Each request carries the cookies of the next session in COOKIE_FILE (one `Cookie:` header
-- value per line), so the load is many shoppers, each sticky to its unit, not one. METHOD
-- (GET by default) and an optional JSON body (`-` for none) let the same script write. ORDER
-- `random` picks each request's session at random instead of in turn (a unit holding more
-- sessions than its memory tier: in turn, every read would come after all the others and an
-- LRU memory tier would never hit). When done, one line `BENCH-RESULT {json}` reports
-- requests, errors and latency percentiles in microseconds.

local cookies = {}
local next_cookie = 0
local method = "GET"
local body = nil
local random_order = false

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then cookies[#cookies + 1] = line end
  end
  if #cookies == 0 then error("no cookies in " .. args[1]) end
  method = args[2] or "GET"
  if args[3] and args[3] ~= "-" then
    local f = assert(io.open(args[3], "rb"))
    body = f:read("*a")
    f:close()
  end
  random_order = args[4] == "random"
  -- Threads and runs start at different sessions.
  math.randomseed(os.time() + #cookies)
  next_cookie = math.random(#cookies)
end

function request()
  if random_order then
    next_cookie = math.random(#cookies)
  else
    next_cookie = next_cookie % #cookies + 1
  end
  local headers = { Cookie = cookies[next_cookie] }
  if body then headers["Content-Type"] = "application/json" end
  return wrk.format(method, nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
