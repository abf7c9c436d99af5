-- The ledger's Redis Function library: every server-side write of PyFilter.
--
-- Loaded by services/common/ledger.py, which puts before this text what
-- comes from Python (the message structs' fields, their version, the grace
-- and stream caps, the library's name). Every function names its KEYS and
-- ARGV as locals first, and touches only keys passed in KEYS: the key names
-- are built in common/keys.py alone. docs/decisions.md ("Ledger") has the map.

local MAX_LINES = 10  -- lines kept per window (and so per ban record)

-- A message as its msgspec Struct decodes it: unknown fields are refused
-- here, the version and tag are the struct's (never typed in Lua).
local function pack(name, values)
  local struct = STRUCTS[name]
  for field in pairs(values) do
    if not struct.fields[field] then error('ledger: ' .. name .. ' has no field ' .. field) end
  end
  values.v = VERSION
  if struct.tag_field then values[struct.tag_field] = struct.tag end
  return cmsgpack.pack(values)
end

-- The shared keys every ban writes, in this order at the start of KEYS.
local SHARED = 4  -- active, scopes, history, decisions
local function shared(keys)
  return {active = keys[1], scopes = keys[2], history = keys[3], decisions = keys[4]}
end

local function is_scoped(ports, verdict)
  return #ports > 0 or verdict ~= 'drop'
end

-- THE ban: the record, the active set, the ban's scope, the address's ban
-- count, the history and the decision every enforcer applies, in one step.
-- `rec` is a BanRecord as a table; its ban_count is set here. `memory`:
-- how long the count is remembered (-1: always). `listed`: whether the
-- address may be in the active set already, with a scope to forget (a scope
-- is kept only beside an active entry); false when the caller knows it is not.
local function write_ban(s, ban_key, count_key, rec, ports, verdict, memory, listed)
  rec.ban_count = redis.call('INCR', count_key)
  if memory >= 0 then redis.call('EXPIRE', count_key, memory) else redis.call('PERSIST', count_key) end
  local packed = pack('BanRecord', rec)
  if rec.expires_at then
    -- The record is read while its ban is in force (and by the notifier just
    -- after); the history stream keeps the past.
    redis.call('SET', ban_key, packed, 'EXAT', math.ceil(rec.expires_at + RECORD_GRACE))
    redis.call('ZADD', s.active, rec.expires_at, rec.address)
  else
    redis.call('SET', ban_key, packed)
    redis.call('ZADD', s.active, '+inf', rec.address)
  end
  if is_scoped(ports, verdict) then
    redis.call('HSET', s.scopes, rec.address, pack('BanScope', {ports = ports, verdict = verdict}))
  elseif listed then
    redis.call('HDEL', s.scopes, rec.address)
  end
  redis.call('XADD', s.history, 'MAXLEN', '~', HISTORY_MAXLEN, '*', 'm', packed)
  redis.call('XADD', s.decisions, 'MAXLEN', '~', DECISIONS_MAXLEN, '*', 'm', pack('Decision', {
    action = 'ban', address = rec.address, rule = rec.rule, origin = rec.origin, host = rec.host,
    created_at = rec.banned_at, duration = rec.duration, expires_at = rec.expires_at,
    reason = rec.reason, ports = ports, verdict = verdict,
  }))
  return packed
end

-- Bans written whole by Python (the api's manual bans, tests, imports).
-- KEYS: active, scopes, history, decisions, then per ban: record, count.
-- ARGV: memory, then the bans as one MessagePack array of {record, ports, verdict}.
-- Returns the records as written (with their ban counts).
local function ban(keys, args)
  local s = shared(keys)
  local memory = tonumber(args[1])
  local bans = cmsgpack.unpack(args[2])
  local written = {}
  for i, b in ipairs(bans) do
    local ban_key, count_key = keys[SHARED + 2 * i - 1], keys[SHARED + 2 * i]
    written[i] = write_ban(s, ban_key, count_key, b.record, b.ports, b.verdict, memory, true)
  end
  return written
end

-- KEYS: active, scopes, decisions, then each address's record.
-- ARGV: now, host, rule, origin, reason, then the addresses.
local function unban(keys, args)
  local active, scopes, decisions = keys[1], keys[2], keys[3]
  local now, host, rule, origin, reason = tonumber(args[1]), args[2], args[3], args[4], args[5]
  for i = 6, #args do
    local address = args[i]
    redis.call('ZREM', active, address)
    redis.call('HDEL', scopes, address)
    redis.call('DEL', keys[i - 2])
    redis.call('XADD', decisions, 'MAXLEN', '~', DECISIONS_MAXLEN, '*', 'm', pack('Decision', {
      action = 'unban', address = address, rule = rule, origin = origin, host = host,
      created_at = now, reason = reason,
    }))
  end
  return #args - 5
end

-- Forget bans whose time ran out (the kernel already dropped them).
-- KEYS: active, scopes. ARGV: now. Returns how many.
local function prune(keys, args)
  local active, scopes = keys[1], keys[2]
  local now = tonumber(args[1])
  local expired = redis.call('ZRANGEBYSCORE', active, '-inf', now)
  for _, address in ipairs(expired) do redis.call('HDEL', scopes, address) end
  return redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
end

-- The notifier: take what is due on a channel and push it a lease into the
-- future, in one step, so two notifiers never both send it.
-- KEYS: queue. ARGV: now, lease, count.
local function claim_due(keys, args)
  local queue = keys[1]
  local now, lease, count = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, count)
  for _, id in ipairs(due) do redis.call('ZADD', queue, 'XX', now + lease, id) end
  return due
end

-- A digest is due when its oldest notice has waited the interval, or when
-- max_batch notices wait. The hold key (a lease while sending, the backoff
-- after a failure) keeps it to one mail at a time and paces retries.
-- KEYS: queue, hold. ARGV: now, lease, max_batch.
local function claim_digest(keys, args)
  local queue, hold = keys[1], keys[2]
  local now, lease, max_batch = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  if redis.call('EXISTS', hold) == 1 then return {} end
  local oldest = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return {} end
  if tonumber(oldest[2]) > now and redis.call('ZCARD', queue) < max_batch then return {} end
  redis.call('SET', hold, 'sending', 'PX', math.floor(lease * 1000))
  return redis.call('ZRANGE', queue, 0, max_batch - 1)
end

-- Failure windows ------------------------------------------------------------
--
-- The windows change only here, so an update is atomic and detector
-- replicas share nothing but Redis. It is idempotent per line id: a
-- redelivered batch adds nothing, because every failure is a sorted-set
-- member named by its line id, and failures at or before the last ban are
-- ignored.
--
-- A window lives in its address's slot and a ban on the ban side (keys.py),
-- which on Redis Cluster are different slots, so a crossed threshold becomes
-- a ban in three calls, each atomic and each harmless to repeat:
-- 1. record_failures (the address's slot) counts failures; a window that
--    crosses its threshold keeps the crossing as `pending` in its state and
--    returns it, and every later call on that window (the redelivered
--    lines, the address's next failure) returns it again until confirmed;
-- 2. ban_crossings (the ban side) judges each crossing once (escalation, a
--    ban as long already in force) and writes its ban; `crossed` keeps the
--    judgement, so a crossing handed back after a crash is not judged again;
-- 3. confirm_crossings (the address's slot) forgets the pending crossing
--    and, if it banned, counts the ban in the address's recidive window,
--    which may cross in its turn (2 and 3 again).
-- A detector that dies between two calls loses nothing: the crossing stays
-- pending in the window until a later call hands it back.

-- The keys of one group in record_failures: where each is from the group's
-- start `at`; the recidive window's state only when that rule is on. (Read
-- where used: a table of them per group cost Redis 3% more CPU per failure.)
local WINDOW, LINES, STATE, CONNS, RECIDIVE_STATE = 1, 2, 3, 4, 5

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

-- A window `g` crossed its threshold at `trigger` (the call's time `now`):
-- the crossing, packed, with all its ban needs, kept as the window's pending
-- one until confirmed. Returns it.
local function keep_crossing(g, now, trigger, window_key, lines_key, state_key)
  local packed = cmsgpack.pack({
    address = g.address, rule = g.rule, host = g.seen_by, trigger = trigger, at = now,
    first = tonumber(redis.call('ZRANGE', window_key, 0, 0, 'WITHSCORES')[2]),
    failures = redis.call('ZCOUNT', window_key, '-inf', trigger),
    lines = redis.call('LRANGE', lines_key, 0, -1),
    bantime = g.bantime, factor = g.factor, maxtime = g.maxtime, memory = g.memory,
    verdict = g.verdict, ports = g.ports,
  })
  redis.call('HSET', state_key, 'pending', packed)
  return packed
end

-- One group's failures into its window; appends to `results` its pending
-- crossing, if any (a new one, or one still waiting for its ban).
--
-- `connection` names the connection a failure belongs to (host, source, pid;
-- "" for none), `once` marks a line that is a failure only if its connection
-- has no other (sshd's "Connection closed by authenticating user"). A
-- replica can only judge that for the lines it saw itself; a connection cut
-- by a batch boundary may have its other failures at another replica, read
-- before or after. So the window keeps, per connection, what it counted: a
-- `once` line of a connection already counted is dropped, and a failure of
-- a connection whose `once` line was counted takes that line's place.
local function record_group(keys, at, g, lines, now, recidive, results)
  local window_key, lines_key, state_key, conns_key = keys[at + WINDOW], keys[at + LINES], keys[at + STATE],
                                                      keys[at + CONNS]
  local state = redis.call('HMGET', state_key, 'reset', 'pending')
  local reset, pending = tonumber(state[1] or '-1'), state[2]
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
      local counted = redis.call('HMGET', state_key, 'last', 'count')
      local last, count = tonumber(counted[1] or '-1'), tonumber(counted[2] or '0')
      for _, ts in ipairs(fresh) do
        if last >= 0 and ts - last <= g.span then count = count + 1 else count = 1 end
        last = ts
        if count >= g.threshold then trigger = ts; count = 0 end
      end
      redis.call('HSET', state_key, 'last', last, 'count', count)
      redis.call('EXPIRE', state_key, ttl)
    end
    if trigger then
      -- A crossing not yet confirmed gives way to this later one: the ban
      -- it would add is at most the same ban, decided again.
      pending = keep_crossing(g, now, trigger, window_key, lines_key, state_key)
      -- Failures before the trigger no longer count; `ttl` after the ban
      -- they are out of the window anyway, so the reset can expire then
      -- (or later, with a consecutive window's state: it changes nothing).
      redis.call('HSET', state_key, 'reset', trigger)
      redis.call('EXPIRE', state_key, ttl)
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
  if pending then
    -- Kept until confirmed, however short the window (a day: as long as
    -- the ban side remembers what it judged, `crossed`).
    redis.call('EXPIRE', state_key, RECORD_GRACE)
    results[#results + 1] = pending
  end
  if recidive then
    results[#results + 1] = redis.call('HGET', keys[at + RECIDIVE_STATE], 'pending') or nil
  end
end

-- KEYS: per group its window, window-lines, window-state, window-conns, and
-- when the recidive rule is on, the address's recidive window-state (one
-- address's keys, so on Redis Cluster a call holds the groups of one slot).
-- ARGV: now, recidive settings (empty when that rule is off), then the
-- groups packed as one MessagePack array (one C call to unpack, instead of
-- a protocol argument per field). A group is one rule, address and host
-- that saw the lines: {rule, address, host, mode, threshold, span, bantime,
-- factor, maxtime, memory, verdict, ports, lines}, where `lines` is a flat
-- array of (line id, log time, text, connection, once) for each failure.
-- Returns the pending crossings of these windows (packed; for ban_crossings).
local function record_failures(keys, args)
  local now = tonumber(args[1])
  local recidive = args[2] ~= ''
  local groups = cmsgpack.unpack(args[3])
  local per_group = recidive and RECIDIVE_STATE or CONNS
  local results = {}
  for i, h in ipairs(groups) do
    local g = with_thresholds({rule = h[1], address = h[2], seen_by = h[3], mode = h[4]}, h, 5)
    record_group(keys, (i - 1) * per_group, g, h[13], now, recidive, results)
  end
  return results
end

-- A crossing, judged: ban, unless a ban at least as long is in force.
-- Returns the ban's duration, or nil if it did not ban.
local function ban_from_crossing(s, ban_key, count_key, c, now)
  local count = tonumber(redis.call('GET', count_key) or '0') + 1
  local duration = escalated(c.bantime, c.factor, c.maxtime, count)
  -- While a ban is in force, crossing a threshold again decides nothing,
  -- unless the new ban is longer (recidive, or a rule with a longer bantime).
  local current = redis.call('ZSCORE', s.active, c.address)
  if current and (current == 'inf' or tonumber(current) > now) then
    if current == 'inf' then return end
    local held = redis.call('GET', ban_key)
    local held_duration = held and cmsgpack.unpack(held).duration or 0
    if duration >= 0 and (held_duration < 0 or duration <= held_duration) then return end
  end
  local ports = {}
  for p in string.gmatch(c.ports, '%d+') do ports[#ports + 1] = tonumber(p) end
  local rec = {
    address = c.address, rule = c.rule, host = c.host, origin = 'detector',
    banned_at = now, duration = duration, first_failure = c.first, last_failure = c.trigger,
    failures = c.failures, lines = c.lines, reason = c.failures .. ' failures of ' .. c.rule,
  }
  if duration >= 0 then rec.expires_at = now + duration end
  write_ban(s, ban_key, count_key, rec, ports, c.verdict, c.memory, current ~= false)
  return duration
end

-- KEYS: active, scopes, history, decisions, then per crossing its address's
-- ban record, ban count and crossed (the ban side: one slot).
-- ARGV: now, then the crossings as record_failures returned them.
-- Returns per crossing the duration of its ban, or '' if it did not ban;
-- a crossing judged before gets the same answer again, and changes nothing.
local function ban_crossings(keys, args)
  local s = shared(keys)
  local now = tonumber(args[1])
  local results = {}
  for i = 2, #args do
    local c = cmsgpack.unpack(args[i])
    local at = SHARED + (i - 2) * 3
    local ban_key, count_key, crossed_key = keys[at + 1], keys[at + 2], keys[at + 3]
    local trigger = string.format('%.17g', c.trigger)
    local judged = redis.call('HGET', crossed_key, c.rule)
    if judged and tonumber(string.match(judged, '^%S+')) >= c.trigger then
      results[#results + 1] = string.match(judged, ' (.*)$')
    else
      local duration = ban_from_crossing(s, ban_key, count_key, c, now)
      local answer = duration and tostring(duration) or ''
      redis.call('HSET', crossed_key, c.rule, trigger .. ' ' .. answer)
      -- Longer than a pending crossing is kept (RECORD_GRACE).
      redis.call('EXPIRE', crossed_key, 2 * RECORD_GRACE)
      results[#results + 1] = answer
    end
  end
  return results
end

-- Every ban by another rule is a failure of the recidive rule: repeat
-- offenders get its (long) ban once they reach its threshold. `c` banned;
-- its failure in the recidive window is named by its rule and time, so
-- counting it again adds nothing.
local function count_for_recidive(keys, at, recidive, c, results)
  local window_key, lines_key, state_key = keys[at + 2], keys[at + 3], keys[at + 4]
  local g = with_thresholds({rule = 'recidive', address = c.address, seen_by = c.host}, recidive, 1)
  local now = c.at
  redis.call('ZADD', window_key, 'NX', now, c.rule .. '@' .. string.format('%.17g', now))
  redis.call('RPUSH', lines_key, 'banned by ' .. c.rule)
  redis.call('LTRIM', lines_key, -MAX_LINES, -1)
  redis.call('ZREMRANGEBYSCORE', window_key, '-inf', '(' .. (now - g.span))
  if redis.call('ZCOUNT', window_key, now - g.span, now) >= g.threshold then
    results[#results + 1] = keep_crossing(g, now, now, window_key, lines_key, state_key)
    redis.call('EXPIRE', state_key, RECORD_GRACE)
    redis.call('DEL', window_key, lines_key)
  else
    redis.call('EXPIRE', window_key, math.ceil(g.span) + 60)
    redis.call('EXPIRE', lines_key, math.ceil(g.span) + 60)
  end
end

-- KEYS: per crossing its window-state, and when the recidive rule is on,
-- the address's recidive window, window-lines and window-state.
-- ARGV: recidive settings (empty when that rule is off), then per crossing:
-- the crossing (as record_failures returned it), and what ban_crossings
-- answered for it. Returns the recidive crossings this caused (packed).
local function confirm_crossings(keys, args)
  local recidive = args[1] ~= '' and cmsgpack.unpack(args[1]) or nil
  local per_crossing = recidive and 4 or 1
  local results = {}
  for i = 2, #args, 2 do
    local at = (i - 2) / 2 * per_crossing
    local packed, duration = args[i], args[i + 1]
    local state_key = keys[at + 1]
    -- Not pending any more: confirmed before (this is a repeat), or it gave
    -- way to a later crossing of the same window.
    if redis.call('HGET', state_key, 'pending') == packed then
      redis.call('HDEL', state_key, 'pending')
      local c = cmsgpack.unpack(packed)
      if duration ~= '' and recidive and c.rule ~= 'recidive' then
        count_for_recidive(keys, at, recidive, c, results)
      end
    end
  end
  return results
end

-- (Only `redis` exists while a library loads: no pairs, no math, here.)
redis.register_function(FUNCTION_PREFIX .. 'record_failures', record_failures)
redis.register_function(FUNCTION_PREFIX .. 'ban_crossings', ban_crossings)
redis.register_function(FUNCTION_PREFIX .. 'confirm_crossings', confirm_crossings)
redis.register_function(FUNCTION_PREFIX .. 'ban', ban)
redis.register_function(FUNCTION_PREFIX .. 'unban', unban)
redis.register_function(FUNCTION_PREFIX .. 'prune', prune)
redis.register_function(FUNCTION_PREFIX .. 'claim_due', claim_due)
redis.register_function(FUNCTION_PREFIX .. 'claim_digest', claim_digest)
