-- The ledger on a clock of log time, for `pyfilter replay` (logtime.py puts
-- this text between the library's first line and the rest of ledger.lua).
--
-- The ledger decides by `now` from its ARGV, but lets Redis forget keys by
-- their TTLs, and Redis counts those in wall-clock seconds: a month of logs
-- replayed in a minute would keep a ban count past its `memory`, and a ban
-- record written with EXAT in log time (last month) would be gone at once.
-- Here `redis` is a stand-in for the real one whose `call` keeps every
-- expiry in log time instead, in the sorted set EXPIRY (key -> when, log
-- time, no Redis TTL at all), and each window call first moves the clock to
-- its `now` and forgets what is due by then. A command that sets or reads a TTL in a way not
-- translated here fails, so a new one in ledger.lua is noticed by the
-- replay tests rather than silently kept in wall time.
--
-- It touches EXPIRY without naming it in KEYS: it runs only in replay's own
-- single Redis, never in a deployment. (Only `redis` exists while a library
-- loads: the stand-in starts as a plain table.)

local STAND_IN = {}  -- the `redis` of the rest of the library (filled below)
-- The real redis.call, as functions see it when they run (the `redis` a
-- library sees while it loads only registers): taken by `tick`, before any
-- call of the library's, from the global the stand-in below hides.
local raw
local clock = 0  -- log time: the `now` of the window call running

local function expire_at(key, at)
  if raw('EXISTS', key) == 0 then return 0 end
  raw('ZADD', EXPIRY, at, key)
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
  if at then raw('ZADD', EXPIRY, at, args[1])
  elseif not keep then raw('ZREM', EXPIRY, args[1]) end
  return reply
end

local function delete(command)
  return function(...)
    raw('ZREM', EXPIRY, ...)
    return raw(command, ...)
  end
end

-- Upper-case command -> what it does here instead.
local IN_LOG_TIME = {
  EXPIRE = function(key, seconds) return expire_at(key, clock + tonumber(seconds)) end,
  PEXPIRE = function(key, ms) return expire_at(key, clock + tonumber(ms) / 1000) end,
  EXPIREAT = function(key, at) return expire_at(key, tonumber(at)) end,
  PEXPIREAT = function(key, ms) return expire_at(key, tonumber(ms) / 1000) end,
  PERSIST = function(key) return raw('ZREM', EXPIRY, key) end,
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
  local due = raw('ZRANGEBYSCORE', EXPIRY, '-inf', '(' .. string.format('%.17g', now))
  for _, key in ipairs(due) do
    raw('DEL', key)
    raw('ZREM', EXPIRY, key)
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
