-- The ledger on a clock of log time, for `pyfilter replay` (logtime.py puts
-- this text between the library's first line and the rest of ledger.lua).
--
-- The ledger decides by `now` from its ARGV, but lets Redis forget keys by
-- their TTLs, and Redis counts those in wall-clock seconds: a month of logs
-- replayed in a minute would keep a ban count past its `memory`, and a ban
-- record written with EXAT in log time (last month) would be gone at once.
-- Here `redis` is a stand-in for the real one whose `call` keeps every
-- expiry in log time instead, in the library's own Lua state (no Redis TTL at
-- all), and each window call first moves the clock to its `now` and deletes
-- what is due by then. A command that sets or reads a TTL in a way not
-- translated here fails, so a new one in ledger.lua is noticed by the
-- replay tests rather than silently kept in wall time.
--
-- The expiries are Lua tables, not a key: a replay sets one or more per
-- failure, and a sorted set of every key cost Redis more than the windows'
-- own commands (docs/benchmarks.md, "What if"). They live as long as the
-- library, which is as long as the run: this runs only in replay's own
-- single Redis, never in a deployment. (Only `redis` exists while a library
-- loads: the stand-in starts as a plain table.)

local STAND_IN = {}  -- the `redis` of the rest of the library (filled below)
-- The real redis.call, as functions see it when they run (the `redis` a
-- library sees while it loads only registers): taken by `tick`, before any
-- call of the library's, from the global the stand-in below hides.
local raw
local clock = 0  -- log time: the `now` of the window call running

-- Key -> when it expires (log time); second -> the keys listed in it; key ->
-- the second it is listed in; the seconds that have keys, in order. A key
-- is listed once, in a second no later than its expiry's: set again later
-- (a window's keys are, at each failure), it stays where it is, and moves
-- to its expiry's second only when the clock reaches that one (one move per
-- span, not one entry per EXPIRE).
local expiry, due_in, listed, seconds = {}, {}, {}, {}

local function list(key, second)
  listed[key] = second
  local keys = due_in[second]
  if not keys then
    keys = {}
    due_in[second] = keys
    local lo, hi = 1, #seconds
    while lo <= hi do
      local mid = math.floor((lo + hi) / 2)
      if seconds[mid] < second then lo = mid + 1 else hi = mid - 1 end
    end
    table.insert(seconds, lo, second)
  end
  keys[#keys + 1] = key
end

local function schedule(key, at)
  expiry[key] = at
  local second = math.floor(at)
  local where = listed[key]
  if not where or where > second then list(key, second) end
end

-- Real Redis ignores an EXPIRE of a missing key; this schedules it anyway,
-- without asking (an EXISTS per EXPIRE was a tenth of a replay's Redis CPU).
-- The same outcome, because ledger.lua gives every key it creates its expiry
-- (or deletes it) in the same call, after its last write: a key missing now
-- and created later is scheduled again before the clock can move past this
-- (and deleting a key that is not there deletes nothing).
local function expire_at(key, at)
  schedule(key, at)
  return 1
end

-- SET's expiry options, in log time; the rest goes to the real SET.
local function set(...)
  local args = {...}
  local plain, at, keep = {'SET'}, nil, false
  local i = 1
  while i <= #args do
    local word = string.upper(tostring(args[i]))
    if i > 2 and (word == 'EX' or word == 'PX' or word == 'EXAT' or word == 'PXAT') then
      local value = tonumber(args[i + 1])
      if word == 'EX' then at = clock + value
      elseif word == 'PX' then at = clock + value / 1000
      elseif word == 'EXAT' then at = value
      else at = value / 1000 end
      i = i + 2
    else
      if i > 2 and word == 'KEEPTTL' then keep = true end
      plain[#plain + 1] = args[i]
      i = i + 1
    end
  end
  local reply = raw(unpack(plain))
  if at then schedule(args[1], at)
  elseif not keep then expiry[args[1]] = nil end
  return reply
end

local function delete(command)
  return function(...)
    for _, key in ipairs({...}) do expiry[key] = nil end
    return raw(command, ...)
  end
end

-- Upper-case command -> what it does here instead.
local IN_LOG_TIME = {
  EXPIRE = function(key, seconds) return expire_at(key, clock + tonumber(seconds)) end,
  PEXPIRE = function(key, ms) return expire_at(key, clock + tonumber(ms) / 1000) end,
  EXPIREAT = function(key, at) return expire_at(key, tonumber(at)) end,
  PEXPIREAT = function(key, ms) return expire_at(key, tonumber(ms) / 1000) end,
  PERSIST = function(key)
    local had = expiry[key] ~= nil
    expiry[key] = nil
    return had and 1 or 0
  end,
  SET = set, DEL = delete('DEL'), UNLINK = delete('UNLINK'),
}
local UNKNOWN = {GETEX = true, SETEX = true, PSETEX = true, TTL = true, PTTL = true, EXPIRETIME = true,
                 PEXPIRETIME = true, RENAME = true, RENAMENX = true, COPY = true, RESTORE = true,
                 HEXPIRE = true, HPEXPIRE = true, HEXPIREAT = true, HPEXPIREAT = true, HPERSIST = true}
-- Each command name as written in the library -> its IN_LOG_TIME entry, or
-- false: one lookup per call once a name has been seen.
local seen = {}

local function call(command, ...)
  local instead = seen[command]
  if instead == nil then
    local name = string.upper(command)
    if UNKNOWN[name] then error('replay: ' .. name .. ' is not kept in log time (services/common/logtime.lua)') end
    instead = IN_LOG_TIME[name] or false
    seen[command] = instead
  end
  if instead then return instead(...) end
  return raw(command, ...)
end

-- The clock moves to `now` (log time), forgetting every key due by then.
local function tick(now)
  -- The rest of the real `redis` (error_reply, pcall...) through the stand-in:
  -- metatables exist once functions run.
  if not raw then
    raw = redis.call
    setmetatable(STAND_IN, {__index = function(_, k) return redis[k] end})
  end
  clock = now
  -- A second's keys are due if they expire before `now`; those of the second
  -- `now` is in that do not stay listed, those set to expire later move.
  while #seconds > 0 and seconds[1] <= now do
    local second = seconds[1]
    local stay = {}
    for _, key in ipairs(due_in[second]) do
      if listed[key] == second then  -- else listed again in an earlier second, and seen there
        local at = expiry[key]
        if not at then
          listed[key] = nil
        elseif math.floor(at) > second then
          list(key, math.floor(at))
        elseif at < now then
          raw('DEL', key)
          expiry[key], listed[key] = nil, nil
        else
          stay[#stay + 1] = key
        end
      end
    end
    if #stay > 0 then
      due_in[second] = stay
      break
    end
    due_in[second] = nil
    table.remove(seconds, 1)
  end
end

-- Replay's window calls (one Redis: record_and_ban, record_accounts; ARGV[1]
-- of each is `now`) first move the clock: no call of its own, no round trip more.
local function register(name, fn)
  if CLOCKED[name] then
    return redis.register_function(name, function(keys, args)
      tick(tonumber(args[1]))
      return fn(keys, args)
    end)
  end
  return redis.register_function(name, fn)
end

STAND_IN.call, STAND_IN.register_function = call, register
local redis = STAND_IN
