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

-- The cookie lines live outside the Lua heap: one block of text and an array of where each line
-- starts and how long it is. Held as a million Lua strings, they stalled wrk for up to 45 ms at
-- a time (most likely LuaJIT's string table, rehashed whole as each request's garbage grows
-- it), and a million sessions' read p99 measured those stalls, not the unit; this way a million
-- cookies cost wrk no more than a hundred thousand (bench/results/2026-12-07-million-sessions.md).
local ffi = require("ffi")
ffi.cdef [[ void *malloc(size_t size); ]]

local text = nil   -- every line, back to back (char *)
local lines = nil  -- line i starts at lines[2i] and is lines[2i + 1] bytes long (int32_t *)
local count = 0
local next_cookie = 0
local method = "GET"
local body = nil
local random_order = false

-- `n` bytes of C memory, never freed: they live as long as wrk's thread.
local function alloc(ctype, n)
  local p = ffi.C.malloc(n)
  -- A NULL pointer is a cdata, which Lua counts as true: compare it with nil.
  if p == nil then error("out of memory for the cookie lines") end
  return ffi.cast(ctype, p)
end

-- Copies the non-empty lines of `path` out of the Lua heap; returns their number.
local function load_lines(path)
  local f = assert(io.open(path, "rb"))
  local all = f:read("*a")
  f:close()
  -- The offsets are 32-bit; the bench's largest file (a million lines) is about 110 MB.
  if #all >= 2 ^ 31 then error(path .. " is over 2 GiB") end
  local newlines = 0
  for _ in string.gmatch(all, "\n") do newlines = newlines + 1 end
  text = alloc("char *", #all + 1)
  ffi.copy(text, all, #all)
  lines = alloc("int32_t *", 8 * (newlines + 2))
  local n, pos = 0, 1
  while pos <= #all do
    local nl = string.find(all, "\n", pos, true) or (#all + 1)
    if nl > pos then
      n = n + 1
      lines[2 * n] = pos - 1
      lines[2 * n + 1] = nl - pos
    end
    pos = nl + 1
  end
  return n
end

function init(args)
  count = load_lines(args[1])
  if count == 0 then error("no cookies in " .. args[1]) end
  -- The file's text as a Lua string is garbage now: collect it before the first request.
  collectgarbage("collect")
  method = args[2] or "GET"
  if args[3] and args[3] ~= "-" then
    local f = assert(io.open(args[3], "rb"))
    body = f:read("*a")
    f:close()
  end
  random_order = args[4] == "random"
  -- Threads and runs start at different sessions.
  math.randomseed(os.time() + count)
  next_cookie = math.random(count)
end

function request()
  if random_order then
    next_cookie = math.random(count)
  else
    next_cookie = next_cookie % count + 1
  end
  local cookie = ffi.string(text + lines[2 * next_cookie], lines[2 * next_cookie + 1])
  local headers = { Cookie = cookie }
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
