"""Server-side scripts of the detector, in one place.

The failure windows live in Redis and change only inside this script, so an
update is atomic and replicas share nothing but Redis. It is idempotent per
line id: a redelivered batch (a collector or detector that crashed before its
acknowledgement) adds nothing, because every failure is a sorted-set member
named by its line id, and failures at or before the last ban are ignored.
When a threshold is crossed the same script writes the ban record and the
ban decision, so a crash can never leave a crossed window without its ban.
"""

RECORD_FAILURES = r"""
-- ARGV: prefix, now, recidive settings (empty when that rule is off), then
-- the groups packed as one MessagePack array (one C call to unpack, instead
-- of a protocol argument per field). A group is one rule, address and host
-- that saw the lines: {rule, address, host, mode, threshold, span, bantime,
-- factor, maxtime, memory, verdict, ports, lines}, where `lines` is a flat array of
-- (line id, log time, text, connection, once) for each failure. The recidive
-- settings are the group's threshold..ports fields, packed the same way.
--
-- `connection` names the connection a failure belongs to (host, source, pid;
-- "" for none), `once` marks a line that is a failure only if its connection
-- has no other (sshd's "Connection closed by authenticating user"). A
-- replica can only judge that for the lines it saw itself; a connection cut
-- by a batch boundary may have its other failures at another replica, read
-- before or after. So the window keeps, per connection, what it counted: a
-- `once` line of a connection already counted is dropped, and a failure of
-- a connection whose `once` line was counted takes that line's place.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local recidive = ARGV[3] ~= '' and cmsgpack.unpack(ARGV[3]) or nil
local groups = cmsgpack.unpack(ARGV[4])
local MAX_LINES = 10
local INF = math.huge
-- A ban record is read while its ban is in force (and by the notifier just
-- after it); the history stream keeps the past. See common/bans.py.
local RECORD_GRACE = 86400

local active_key = prefix .. 'bans:active'
local results = {}

-- A group's thresholds, from `s` at `i`: threshold, span, bantime, factor,
-- maxtime, memory, verdict, ports (a group's fields 5-12, recidive's 1-8).
local function with_thresholds(g, s, i)
  g.threshold, g.span, g.bantime, g.factor = s[i], s[i + 1], s[i + 2], s[i + 3]
  g.maxtime, g.memory, g.verdict, g.ports = s[i + 4], s[i + 5], s[i + 6], s[i + 7]
  return g
end

local function escalated(bantime, factor, maxtime, count)
  if bantime < 0 then return -1 end
  local d = math.floor(bantime * factor ^ (count - 1))
  if maxtime >= 0 and d > maxtime then d = maxtime end
  return d
end

-- The failure that completes a `span`-long stretch of `threshold` failures
-- holding one of the `fresh` ones (sorted), the latest such if several; nil
-- if none. Replicas may record a batch's failures out of order, so a stretch
-- may lie before or after a fresh failure. One pass over the window: a flood
-- from one address (thousands of failures in one call) stays linear.
local function crossing(window_key, fresh, span, threshold)
  local found = redis.call('ZRANGEBYSCORE', window_key, fresh[1] - span, fresh[#fresh] + span, 'WITHSCORES')
  local times = {}
  for i = 2, #found, 2 do times[#times + 1] = tonumber(found[i]) end
  local trigger, f, lo = nil, 1, 1
  for hi = 1, #times do
    while times[hi] - times[lo] > span do lo = lo + 1 end
    if hi - lo + 1 >= threshold then
      -- Stretches only move forward: a fresh failure before this one's start
      -- is in no stretch; those inside it are completed by times[hi].
      while f <= #fresh and fresh[f] < times[lo] do f = f + 1 end
      while f <= #fresh and fresh[f] <= times[hi] do trigger = times[hi]; f = f + 1 end
    end
  end
  return trigger
end

local function ban(g, trigger, window_key, lines_key)
  local count = tonumber(redis.call('GET', prefix .. 'bancount:' .. g.address) or '0') + 1
  local duration = escalated(g.bantime, g.factor, g.maxtime, count)
  local expires = INF
  if duration >= 0 then expires = now + duration end
  -- While a ban is in force, crossing a threshold again decides nothing,
  -- unless the new ban is longer (recidive, or a rule with a longer bantime).
  local current = redis.call('ZSCORE', active_key, g.address)
  if current and (current == 'inf' or tonumber(current) > now) then
    if current == 'inf' then return end
    local held = redis.call('GET', prefix .. 'ban:' .. g.address)
    local held_duration = held and cmsgpack.unpack(held).duration or 0
    if duration >= 0 and (held_duration < 0 or duration <= held_duration) then return end
  end
  local count_key = prefix .. 'bancount:' .. g.address
  redis.call('INCR', count_key)
  if g.memory >= 0 then redis.call('EXPIRE', count_key, g.memory) else redis.call('PERSIST', count_key) end

  local first = redis.call('ZRANGE', window_key, 0, 0, 'WITHSCORES')[2]
  local failures = redis.call('ZCOUNT', window_key, '-inf', trigger)
  local ports = {}
  for p in string.gmatch(g.ports, '%d+') do ports[#ports + 1] = tonumber(p) end
  local reason = failures .. ' failures of ' .. g.rule
  local record = {
    address = g.address, rule = g.rule, host = g.seen_by, origin = 'detector',
    banned_at = now, duration = duration, first_failure = tonumber(first),
    last_failure = trigger, failures = failures, ban_count = count,
    lines = redis.call('LRANGE', lines_key, 0, -1), reason = reason, v = 1,
  }
  local decision = {
    type = 'decision', action = 'ban', address = g.address, rule = g.rule,
    origin = 'detector', host = g.seen_by, created_at = now, duration = duration,
    reason = reason, ports = ports, verdict = g.verdict, v = 1,
  }
  if duration >= 0 then
    record.expires_at = expires
    decision.expires_at = expires
  end
  local packed = cmsgpack.pack(record)
  if duration >= 0 then
    redis.call('SET', prefix .. 'ban:' .. g.address, packed, 'EXAT', math.ceil(expires + RECORD_GRACE))
  else
    redis.call('SET', prefix .. 'ban:' .. g.address, packed)
  end
  redis.call('ZADD', active_key, expires == INF and '+inf' or expires, g.address)
  redis.call('XADD', prefix .. 'bans:history', 'MAXLEN', '~', 100000, '*', 'm', packed)
  redis.call('XADD', prefix .. 'decisions', 'MAXLEN', '~', 1000000, '*', 'm', cmsgpack.pack(decision))
  results[#results + 1] = g.address .. ' ' .. g.rule .. ' ' .. duration
  return true
end

-- Every ban by another rule is a failure of the recidive rule: repeat
-- offenders get its (long) ban once they reach its threshold.
local function count_for_recidive(address, seen_by, rule)
  if not recidive or rule == 'recidive' then return end
  local g = with_thresholds({rule = 'recidive', address = address, seen_by = seen_by, mode = 'sliding'},
                            recidive, 1)
  local window_key = prefix .. 'window:recidive:' .. address
  local lines_key = prefix .. 'window-lines:recidive:' .. address
  redis.call('ZADD', window_key, now, rule .. '@' .. now)
  redis.call('RPUSH', lines_key, 'banned by ' .. rule)
  redis.call('LTRIM', lines_key, -MAX_LINES, -1)
  redis.call('ZREMRANGEBYSCORE', window_key, '-inf', '(' .. (now - g.span))
  if redis.call('ZCOUNT', window_key, now - g.span, now) >= g.threshold then
    ban(g, now, window_key, lines_key)
    redis.call('DEL', window_key, lines_key)
  else
    redis.call('EXPIRE', window_key, math.ceil(g.span) + 60)
    redis.call('EXPIRE', lines_key, math.ceil(g.span) + 60)
  end
end

for _, h in ipairs(groups) do
  local g = with_thresholds({rule = h[1], address = h[2], seen_by = h[3], mode = h[4]}, h, 5)
  local lines = h[13]

  local key_tail = g.rule .. ':' .. g.address
  local window_key = prefix .. 'window:' .. key_tail
  local lines_key = prefix .. 'window-lines:' .. key_tail
  local reset_key = prefix .. 'window-reset:' .. key_tail
  local state_key = prefix .. 'window-state:' .. key_tail
  local conns_key = prefix .. 'window-conns:' .. key_tail
  local reset = tonumber(redis.call('GET', reset_key) or '-1')
  -- A line older than the window when it arrives cannot ban.
  local reach = g.span
  if g.mode == 'consecutive' then reach = g.span * g.threshold end
  local oldest = now - reach

  local fresh, texts = {}, {}
  local conns_changed = false
  for i = 1, #lines, 5 do
    local id, ts, connection, once = lines[i], math.min(lines[i + 1], now), lines[i + 3], lines[i + 4]
    local counts = ts >= oldest and ts > reset
    if counts and connection ~= '' then
      local counted = redis.call('HGET', conns_key, connection)  -- '!', or the id of its `once` line
      if once then
        counts = not counted
        if counts then redis.call('HSET', conns_key, connection, id); conns_changed = true end
      elseif counted ~= '!' then
        if counted then redis.call('ZREM', window_key, counted) end
        redis.call('HSET', conns_key, connection, '!')
        conns_changed = true
      end
    end
    if counts and redis.call('ZADD', window_key, 'NX', ts, id) == 1 then
      fresh[#fresh + 1] = ts
      texts[#texts + 1] = lines[i + 2]
    end
  end

  local ttl = math.ceil(reach) + 60
  if #fresh > 0 then
    table.sort(fresh)
    -- Only the last MAX_LINES are kept (and Lua's `unpack` has a size limit).
    redis.call('RPUSH', lines_key, unpack(texts, math.max(1, #texts - MAX_LINES + 1)))
    redis.call('LTRIM', lines_key, -MAX_LINES, -1)
    redis.call('ZREMRANGEBYSCORE', window_key, '-inf', '(' .. oldest)
    local trigger = nil
    if g.mode == 'instant' then
      trigger = fresh[#fresh]
    elseif g.mode == 'sliding' then
      trigger = crossing(window_key, fresh, g.span, g.threshold)
    else -- consecutive: each failure within `span` of the previous adds one
      local state = redis.call('HMGET', state_key, 'last', 'count')
      local last, count = tonumber(state[1] or '-1'), tonumber(state[2] or '0')
      for _, ts in ipairs(fresh) do
        if last >= 0 and ts - last <= g.span then count = count + 1 else count = 1 end
        last = ts
        if count >= g.threshold then trigger = ts; count = 0 end
      end
      redis.call('HSET', state_key, 'last', last, 'count', count)
      redis.call('EXPIRE', state_key, ttl)
    end
    if trigger then
      if ban(g, trigger, window_key, lines_key) then
        count_for_recidive(g.address, g.seen_by, g.rule)
      end
      -- Failures before the trigger no longer count; `ttl` after the ban
      -- they are out of the window anyway, so the reset can expire then.
      redis.call('SET', reset_key, trigger, 'EX', ttl)
      redis.call('ZREMRANGEBYSCORE', window_key, '-inf', trigger)
      redis.call('DEL', lines_key)
    else
      redis.call('EXPIRE', lines_key, ttl)
    end
    redis.call('EXPIRE', window_key, ttl)
  end
  if conns_changed then
    redis.call('EXPIRE', conns_key, ttl)
  end
end
return results
"""
