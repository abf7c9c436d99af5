-- The ledger's Redis Function library: every server-side write of PyFilter.
--
-- Loaded by services/common/ledger.py, which puts before this text what
-- comes from Python (the message structs' fields, their version, the grace
-- and stream caps, the library's name). Every function names its KEYS and
-- ARGV as locals first, and touches only keys passed in KEYS: the key names
-- are built in common/keys.py alone (record_accounts' one call on a single
-- Redis, whose banned addresses are known only inside it, is given keys.py's
-- templates of them instead). docs/decisions.md ("Ledger") has the map.

local MAX_LINES = 10  -- lines kept per window (and so per ban record)

-- Whether every line comes in one window call only, never again: true in
-- `pyfilter replay` alone (logtime.py turns it on), which reads each line of
-- its files once. A detector's lines may be redelivered; the guards against
-- counting one twice that are not also a window's data (a slow window's
-- `ids`) are then skipped, since they would always find the line new.
local DELIVERED_ONCE = false

-- A number given to redis.call is formatted by Redis ("%.17g") at every call,
-- and Lua formats one joined to a string ("%.14g") at every join: together a
-- tenth of a replay's Redis CPU, for the few log seconds, buckets and window
-- starts a call's failures share. So the window functions pass the hot ones
-- as text, each made once: `numeral(x)` (what Redis would have made of x) and
-- `below(x)` ('(' .. x, a range's exclusive end, as Lua joins it). Same text,
-- same result; the cache is emptied when it holds NUMBER_TEXTS.
local NUMBER_TEXTS = 4096
local numerals, belows, number_texts = {}, {}, 0

local function counted_text()
  number_texts = number_texts + 1
  if number_texts > NUMBER_TEXTS then numerals, belows, number_texts = {}, {}, 1 end
end

local function numeral(x)
  local text = numerals[x]
  if not text then
    counted_text()
    text = string.format('%.17g', x)
    numerals[x] = text
  end
  return text
end

local function below(x)
  local text = belows[x]
  if not text then
    counted_text()
    text = '(' .. x
    belows[x] = text
  end
  return text
end

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

-- Ban indexes ---------------------------------------------------------------
--
-- What the api reads instead of every record (docs/decisions.md, "Bounded
-- reads"). For each ban in force, `index` (a sorted set read by lexical
-- range, every score 0) holds one member per way it is looked up, newest
-- first within each: by time, rule, host, host and rule, and country, and by address (in an
-- order where a network's addresses are one range); `indexed` keeps, per
-- address, what its members were built from, so they can be taken out again;
-- `counts` counts the bans in force by rule, host and country. A ban also
-- counts in its day's hash, and its history entry's ID goes to `past`.
-- Called only from the functions below that write bans, unban and prune.

local SEP = '\t'
local INDEX = 3  -- index, indexed, counts: the keys every index change needs
local DAY_TTL = 400 * 86400  -- /stats reads at most 366 days
local MAX_PAST = 20  -- history IDs kept per address
local FORGET_BATCH = 1000  -- `past` entries forgotten per prune

local function index_keys(keys, at)
  return {index = keys[at], indexed = keys[at + 1], counts = keys[at + 2]}
end

-- An address or network as fixed-width hex and its length ("4c6336407/032"),
-- so a network's members are one lexical range (Python: api/index.py).
local function sortable(address)
  local ip, len = address:match('^([^/]+)/?(%d*)$')
  if not ip:find(':', 1, true) then
    local a, b, c, d = ip:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
    return string.format('4%02x%02x%02x%02x/%03d', a, b, c, d, tonumber(len) or 32)
  end
  local head, tail = ip:match('^(.-)::(.*)$')
  local groups, rest = {}, {}
  for g in (head or ip):gmatch('[^:]+') do groups[#groups + 1] = tonumber(g, 16) end
  for g in (tail or ''):gmatch('[^:]+') do rest[#rest + 1] = tonumber(g, 16) end
  for _ = 1, 8 - #groups - #rest do groups[#groups + 1] = 0 end
  for _, g in ipairs(rest) do groups[#groups + 1] = g end
  local out = {'6'}
  for i = 1, 8 do out[i + 1] = string.format('%04x', groups[i]) end
  return table.concat(out) .. string.format('/%03d', tonumber(len) or 128)
end

local function split(text)
  local parts = {}
  for part in (text .. SEP):gmatch('(.-)' .. SEP) do parts[#parts + 1] = part end
  return parts
end

-- An entry of `indexed`: ms (banned_at in milliseconds, 15 digits), rule,
-- host, country ("": not looked up yet, "?": none known), expires_at ("": never).
local function entry_text(e)
  return table.concat({e.ms, e.rule, e.host, e.country, e.expires}, SEP)
end

local function entry_of(text)
  local p = split(text)
  return {ms = p[1], rule = p[2], host = p[3], country = p[4], expires = p[5]}
end

local function known_country(e)
  if e.country == '' then return '?' end
  return e.country
end

local function members(address, e)
  local tail = SEP .. e.ms .. SEP .. address
  local m = {'t' .. tail, 'r' .. SEP .. e.rule .. tail, 'h' .. SEP .. e.host .. tail,
             'x' .. SEP .. e.host .. SEP .. e.rule .. tail, 'c' .. SEP .. known_country(e) .. tail,
             'a' .. SEP .. sortable(address) .. SEP .. address}
  if e.country == '' then m[#m + 1] = 'p' .. tail end
  return m
end

-- Counted by host and rule, and by country: totals, per rule and per host are
-- their sums (a call less per ban and count; each costs a flood's detector).
local function count_fields(e)
  return {'host-rule' .. SEP .. e.host .. SEP .. e.rule, 'country' .. SEP .. known_country(e)}
end

local function count_active(ix, e, by)
  for _, field in ipairs(count_fields(e)) do
    if redis.call('HINCRBY', ix.counts, field, by) <= 0 then redis.call('HDEL', ix.counts, field) end
  end
end

local function index_add(ix, address, e)
  local m = members(address, e)
  local args = {}
  for _, member in ipairs(m) do args[#args + 1] = 0; args[#args + 1] = member end
  redis.call('ZADD', ix.index, unpack(args))
  redis.call('HSET', ix.indexed, address, entry_text(e))
  count_active(ix, e, 1)
end

-- Out of every index; returns what it was indexed as (nil: it was not).
local function index_remove(ix, address)
  local text = redis.call('HGET', ix.indexed, address)
  if not text then return nil end
  local e = entry_of(text)
  redis.call('ZREM', ix.index, unpack(members(address, e)))
  redis.call('HDEL', ix.indexed, address)
  count_active(ix, e, -1)
  return e
end

local function entry_from_record(rec)
  return {ms = string.format('%015d', math.floor(rec.banned_at * 1000)), rule = rec.rule, host = rec.host,
          country = rec.country or '', expires = rec.expires_at and string.format('%.17g', rec.expires_at) or ''}
end

-- A ban was written: index it in place of the address's previous ban, count
-- it in its day, and remember where its history entry is for `memory`.
-- KEYS of `ix`: index, indexed, counts, day, past, past_until.
local function index_ban(ix, rec, history_id, memory)
  index_remove(ix, rec.address)
  local e = entry_from_record(rec)
  index_add(ix, rec.address, e)
  local fields = count_fields(e)
  if redis.call('HINCRBY', ix.day, fields[1], 1) == 1 then redis.call('EXPIRE', ix.day, DAY_TTL) end
  if e.country ~= '' then redis.call('HINCRBY', ix.day, fields[2], 1) end
  local ids = {history_id}
  local before = redis.call('HGET', ix.past, rec.address)
  if before then
    for id in before:gmatch('%S+') do
      if #ids < MAX_PAST then ids[#ids + 1] = id end
    end
  end
  redis.call('HSET', ix.past, rec.address, table.concat(ids, ' '))
  redis.call('ZADD', ix.past_until, memory >= 0 and rec.banned_at + memory or '+inf', rec.address)
end

-- Addresses whose ban count's memory ran out: their `past` goes too.
local function forget_past(ix, now)
  local old = redis.call('ZRANGEBYSCORE', ix.past_until, '-inf', now, 'LIMIT', 0, FORGET_BATCH)
  if #old > 0 then
    redis.call('HDEL', ix.past, unpack(old))
    redis.call('ZREM', ix.past_until, unpack(old))
  end
end

-- The shared keys every ban writes, in this order at the start of KEYS.
local SHARED = 10  -- active, scopes, history, decisions, index, indexed, counts, day, past, past_until
local function shared(keys)
  return {active = keys[1], scopes = keys[2], history = keys[3], decisions = keys[4],
          index = keys[5], indexed = keys[6], counts = keys[7], day = keys[8], past = keys[9],
          past_until = keys[10]}
end

-- The duration of each ban this library wrote, by address, with its expiry:
-- ban_duration reads it instead of the whole record (2-3 KB to GET and
-- unpack) when an account crossing judges addresses banned already, as most
-- are. Only a hint, in the library's Lua state: believed only while the
-- address's expiry in the active set is the one written beside it (a ban
-- written since by anything else, an unban, a restart or a failover, which
-- empties it, all fall back to the record). Two tables of numbers (no table
-- per address: about 100 bytes each), forgotten whole at HELD_KEPT.
local HELD_KEPT = 50000
local held_until, held_bans, held_count = {}, {}, 0

local function remember_held(rec)
  if not held_bans[rec.address] then
    if held_count >= HELD_KEPT then held_until, held_bans, held_count = {}, {}, 0 end
    held_count = held_count + 1
  end
  held_until[rec.address], held_bans[rec.address] = rec.expires_at, rec.duration or 0
end

-- The duration of the ban in force on `address` until `expires` (the active
-- set's score, a time): from held_bans, or its record.
local function held_duration(ban_key, address, expires)
  if held_until[address] == expires then return held_bans[address] end
  local held = redis.call('GET', ban_key)
  return held and cmsgpack.unpack(held).duration or 0
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
    remember_held(rec)
  else
    redis.call('SET', ban_key, packed)
    redis.call('ZADD', s.active, '+inf', rec.address)
  end
  if is_scoped(ports, verdict) then
    redis.call('HSET', s.scopes, rec.address, pack('BanScope', {ports = ports, verdict = verdict}))
  elseif listed then
    redis.call('HDEL', s.scopes, rec.address)
  end
  local history_id = redis.call('XADD', s.history, 'MAXLEN', '~', HISTORY_MAXLEN, '*', 'm', packed)
  index_ban(s, rec, history_id, memory)
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

-- KEYS: active, scopes, decisions, index, indexed, counts, then each address's record.
-- ARGV: now, host, rule, origin, reason, then the addresses.
local function unban(keys, args)
  local active, scopes, decisions = keys[1], keys[2], keys[3]
  local ix = index_keys(keys, 4)
  local now, host, rule, origin, reason = tonumber(args[1]), args[2], args[3], args[4], args[5]
  for i = 6, #args do
    local address = args[i]
    redis.call('ZREM', active, address)
    redis.call('HDEL', scopes, address)
    redis.call('DEL', keys[i + 1])
    index_remove(ix, address)
    redis.call('XADD', decisions, 'MAXLEN', '~', DECISIONS_MAXLEN, '*', 'm', pack('Decision', {
      action = 'unban', address = address, rule = rule, origin = origin, host = host,
      created_at = now, reason = reason,
    }))
  end
  return #args - 5
end

-- Forget bans whose time ran out (the kernel already dropped them).
-- KEYS: active, scopes, index, indexed, counts, past, past_until. ARGV: now.
-- Returns how many.
local function prune(keys, args)
  local active, scopes = keys[1], keys[2]
  local ix = index_keys(keys, 3)
  ix.past, ix.past_until = keys[6], keys[7]
  local now = tonumber(args[1])
  local expired = redis.call('ZRANGEBYSCORE', active, '-inf', now)
  for _, address in ipairs(expired) do
    redis.call('HDEL', scopes, address)
    index_remove(ix, address)
  end
  forget_past(ix, now)
  return redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
end

-- The api looked up the country of bans written without one.
-- KEYS: index, indexed, counts, then each ban's day. ARGV: address, country
-- ("?": none known) for each. A ban lifted or replaced meanwhile is left alone.
local function set_countries(keys, args)
  local ix = index_keys(keys, 1)
  local set = 0
  for i = 1, #args, 2 do
    local address, country = args[i], args[i + 1]
    local text = redis.call('HGET', ix.indexed, address)
    if text and entry_of(text).country == '' then
      local e = index_remove(ix, address)
      e.country = country
      index_add(ix, address, e)
      redis.call('HINCRBY', keys[INDEX + (i + 1) / 2], 'country' .. SEP .. country, 1)
      set = set + 1
    end
  end
  return set
end

-- Bans in force before the indexes existed (an upgrade): index those not yet.
-- KEYS: index, indexed, counts, then each ban's record.
local function index_existing(keys)
  local ix = index_keys(keys, 1)
  local done = 0
  for i = INDEX + 1, #keys do
    local raw = redis.call('GET', keys[i])
    if raw then
      local rec = cmsgpack.unpack(raw)
      if redis.call('HEXISTS', ix.indexed, rec.address) == 0 then
        index_add(ix, rec.address, entry_from_record(rec))
        done = done + 1
      end
    end
  end
  return done
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
-- Notices due after `horizon` (now and the interval: a network ban's end,
-- still to come) are not in any digest before they fall due.
-- KEYS: queue, hold. ARGV: now, lease, max_batch, horizon.
local function claim_digest(keys, args)
  local queue, hold = keys[1], keys[2]
  local now, lease, max_batch = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local horizon = args[4] or '+inf'
  if redis.call('EXISTS', hold) == 1 then return {} end
  local oldest = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return {} end
  if tonumber(oldest[2]) > now and redis.call('ZCOUNT', queue, '-inf', horizon) < max_batch then return {} end
  redis.call('SET', hold, 'sending', 'PX', math.floor(lease * 1000))
  return redis.call('ZRANGEBYSCORE', queue, '-inf', horizon, 'LIMIT', 0, max_batch)
end

-- Per network ----------------------------------------------------------------
--
-- When `threshold` addresses of one network are banned by the detector within
-- `span`, the network is banned (docs/rules.md, "Per network"). Python decides
-- what each banned address counts in (ledger.py's network payload): per step a
-- key (a network, or an owner "AS64500"), the unit it counts as there (itself,
-- or its network of the step before: a /48 counts its /64s), the network to ban
-- and where that network's record and count are in KEYS. It leaves out every
-- step that would cover a whitelisted network or a host's own address, and any
-- wider than the widest allowed; an address it did not plan for counts nowhere.
-- A unit is a member of three keys of the ban side: `net-units` (a lexical
-- range per key: its count is one ZLEXCOUNT), `net-seen` (when last banned: the
-- units older than `span` are forgotten) and `net-members` (its latest banned
-- address: the evidence).

local NETWORK_EVIDENCE = 50  -- member addresses a network's ban record lists
local FORGET_UNITS = 100  -- units forgotten per ban: more than one ban adds

-- The network payload of a call (nil: no widening), its keys resolved.
local function network_of(keys, arg)
  if not arg or arg == '' then return nil end
  local net = cmsgpack.unpack(arg)
  net.units, net.seen, net.members, net.keys = keys[net.at], keys[net.at + 1], keys[net.at + 2], keys
  return net
end

local function in_force(s, address, now)
  local score = redis.call('ZSCORE', s.active, address)
  return score and (score == 'inf' or tonumber(score) > now)
end

local function forget_units(net, units)
  if #units == 0 then return end
  redis.call('ZREM', net.units, unpack(units))
  redis.call('ZREM', net.seen, unpack(units))
  redis.call('HDEL', net.members, unpack(units))
end

-- The units of a network (`first`..`last`: its lexical range) banned since
-- `oldest`, up to `want` of them. The stale ones met on the way are forgotten:
-- forgetting by age (in `widen`) lags after a flood.
local function fresh_units(net, first, last, oldest, want)
  local fresh, offset = {}, 0
  while #fresh < want do
    local units = redis.call('ZRANGEBYLEX', net.units, first, last, 'LIMIT', offset, FORGET_UNITS)
    if #units == 0 then break end
    local seen = redis.call('ZMSCORE', net.seen, unpack(units))
    local stale = {}
    for i, unit in ipairs(units) do
      if seen[i] and tonumber(seen[i]) >= oldest then fresh[#fresh + 1] = unit else stale[#stale + 1] = unit end
    end
    forget_units(net, stale)
    offset = offset + #units - #stale
    if #units < FORGET_UNITS then break end
  end
  return fresh
end

-- The ban `rec` was written at `now`: count it in its networks, and ban each
-- network it fills (unless a ban of it is in force). A network banned by its
-- own count starts counting again; an owner keeps counting, so each later
-- member's network is banned too while the owner stays over the threshold.
local function widen(s, net, rec, now)
  local steps = net.of[rec.address]
  if not steps then return end
  forget_units(net, redis.call('ZRANGEBYSCORE', net.seen, '-inf', '(' .. (now - net.span), 'LIMIT', 0, FORGET_UNITS))
  for _, step in ipairs(steps) do
    local key, unit, target, at = step[1], step[2], step[3], step[4]
    local member = key .. SEP .. unit
    redis.call('ZADD', net.units, 0, member)
    redis.call('ZADD', net.seen, now, member)
    redis.call('HSET', net.members, member, rec.address)
    local first, last = '[' .. key .. SEP, '[' .. key .. SEP .. '\255'
    local fresh = {}
    if redis.call('ZLEXCOUNT', net.units, first, last) >= net.threshold and not in_force(s, target, now) then
      fresh = fresh_units(net, first, last, now - net.span, math.max(net.threshold, NETWORK_EVIDENCE))
    end
    if #fresh >= net.threshold then
      local count = redis.call('ZLEXCOUNT', net.units, first, last)
      local evidence = redis.call('HMGET', net.members, unpack(fresh, 1, math.min(#fresh, NETWORK_EVIDENCE)))
      local wide = {
        address = target, rule = 'network', host = rec.host, origin = rec.origin, banned_at = now,
        duration = net.bantime, failures = count, window = 'network', evidence = evidence,
        reason = count .. ' banned addresses of ' .. key .. ' within ' .. net.span .. 's',
      }
      if net.bantime >= 0 then wide.expires_at = now + net.bantime end
      write_ban(s, net.keys[at], net.keys[at + 1], wide, {}, 'drop', net.memory,
                redis.call('ZSCORE', s.active, target) ~= false)
      if key == target then forget_units(net, redis.call('ZRANGEBYLEX', net.units, first, last)) end
    end
  end
end

-- Failure windows ------------------------------------------------------------
--
-- The windows change only here, so an update is atomic and detector
-- replicas share nothing but Redis. It is idempotent per line id: a
-- redelivered batch adds nothing, because every failure is a sorted-set
-- member named by its line id, and failures at or before the last ban are
-- ignored.
--
-- On a single Redis, record_and_ban counts a read's failures and writes the
-- bans they cause in one call: a crash can never leave a crossed window
-- without its ban.
--
-- On Redis Cluster a window lives in its address's slot and a ban on the
-- ban side (keys.py), different slots, so a crossed threshold becomes a ban
-- in three calls, each atomic and each harmless to repeat:
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
-- Both ways count, judge and ban with the same functions below; only what
-- happens to a crossing between counting and judging differs.

-- The keys of one group in both window calls: where each is from the
-- group's start `at`. record_failures then has the recidive window's state
-- (when that rule is on); record_and_ban has the address's ban record and
-- count, then the recidive window's state, window and lines. (Read where
-- used: a table of them per group cost Redis 3% more CPU per failure.)
local WINDOW, LINES, STATE, CONNS = 1, 2, 3, 4
local RECIDIVE_STATE = 5  -- record_failures
local BAN, COUNT, BANNING_RECIDIVE_STATE, RECIDIVE_WINDOW, RECIDIVE_LINES = 5, 6, 7, 8, 9  -- record_and_ban

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

-- The longest ban `escalated` gives with these settings, whatever the
-- count (bantime >= 0; config.py: factor >= 1).
local function longest(c)
  if c.factor <= 1 then return math.floor(c.bantime) end
  if c.maxtime >= 0 then return c.maxtime end
  return math.huge
end

-- The failure that completes a `span`-long stretch of `threshold` failures
-- holding one of the `fresh` ones (sorted), the latest such if several; nil
-- if none. Replicas may record a batch's failures out of order, so a stretch
-- may lie before or after a fresh failure. One pass over the window: a flood
-- from one address (thousands of failures in one call) stays linear.
local function crossing(window_key, fresh, span, threshold)
  local found = redis.call('ZRANGEBYSCORE', window_key, numeral(fresh[1] - span), numeral(fresh[#fresh] + span),
                           'WITHSCORES')
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

-- Window `g` crossed its threshold at `trigger`, in the call at `now`: the
-- crossing is the group itself (rule, address, host, thresholds: what its
-- ban needs) with these two, but what the window holds (with_details). (A
-- table of its own per crossing cost Redis 2% more CPU in a flood.)
local function crossing_of(g, now, trigger)
  g.trigger, g.at = trigger, now
  return g
end

-- What the ban record tells of the window that crossed: its first failure,
-- the failures up to the trigger, its last lines. Read before the window is
-- reset; on a single Redis only when the crossing bans.
local function window_details(window_key, lines_key, trigger)
  return tonumber(redis.call('ZRANGE', window_key, '0', '0', 'WITHSCORES')[2]),
         redis.call('ZCOUNT', window_key, '-inf', trigger), redis.call('LRANGE', lines_key, '0', '-1')
end

local function with_details(c, window_key, lines_key)
  c.first, c.failures, c.lines = window_details(window_key, lines_key, c.trigger)
  return c
end

-- A crossing `c`, packed, kept as the pending one of the window whose state
-- is `state_key` until confirmed. Returns it.
local function keep(state_key, c)
  local packed = cmsgpack.pack(c)
  redis.call('HSET', state_key, 'pending', packed)
  return packed
end

-- On Redis Cluster, what record_failures does with a crossing: keeps it.
local function keep_crossing(_, c, window_key, lines_key, state_key)
  if not window_key then return keep(state_key, c) end  -- details read already (record_slow)
  return keep(state_key, with_details(c, window_key, lines_key))
end

-- Slow windows ---------------------------------------------------------------
--
-- A rule's `slow:` window (30 failures in 24 h) counts failures per bucket of
-- log time (a hash: bucket number -> count), so what it keeps per address is
-- bounded by span / bucket, however many the failures. The window at a
-- failure is its bucket and the n - 1 before it (n = span / bucket). Its four
-- keys take the places of a window's: buckets, lines, state (reset,
-- pending), ids. Idempotent per line id: each counted line id is kept in
-- `ids` (scored by when it was counted) for `horizon` seconds, as long as a
-- batch may wait to be redelivered (docs/decisions.md, "Slow windows"); its
-- count stays in its bucket after the id is forgotten.

-- Lines a slow window keeps for its ban record: fewer than a window's, as
-- they are most of what it costs per address (docs/scaling.md, "Slow windows").
local SLOW_LINES = 3

-- The latest of the n-bucket stretches that hold a fresh bucket and reach
-- `threshold`: {trigger (its latest fresh failure), failures, first bucket},
-- or nil. `counts`: bucket -> failures; `fresh`: bucket -> latest fresh failure.
local function slow_crossing(counts, fresh, n, threshold)
  local buckets = {}
  for b in pairs(counts) do buckets[#buckets + 1] = b end
  table.sort(buckets)
  local found, sum, lo = nil, 0, 1
  for hi = 1, #buckets do
    sum = sum + counts[buckets[hi]]
    while buckets[lo] <= buckets[hi] - n do sum = sum - counts[buckets[lo]]; lo = lo + 1 end
    if sum >= threshold then
      local trigger = nil
      for j = lo, hi do
        local t = fresh[buckets[j]]
        if t and (not trigger or t > trigger) then trigger = t end
      end
      if trigger then found = {trigger = trigger, failures = sum, first = buckets[lo]} end
    end
  end
  return found
end

-- One group's failures into its slow window, as record_group does for the
-- other kinds (same `on_crossing`, same return). `g.extra`: {bucket, horizon}.
local function record_slow(keys, at, g, lines, now, on_crossing)
  local buckets_key, lines_key, state_key, ids_key = keys[at + WINDOW], keys[at + LINES], keys[at + STATE],
                                                     keys[at + CONNS]
  local size, horizon = g.extra[1], g.extra[2]
  local n = math.floor(g.span / size)
  local state = redis.call('HMGET', state_key, 'reset', 'pending')
  local reset, pending = tonumber(state[1] or '-1'), state[2]
  local oldest = now - g.span
  if not DELIVERED_ONCE then redis.call('ZREMRANGEBYSCORE', ids_key, '-inf', below(now - horizon)) end
  local fresh, texts, weights, added = {}, {}, {}, false
  for i = 1, #lines, FIELDS do
    local id, ts = lines[i], math.min(lines[i + 1], now)
    if ts >= oldest and ts > reset
       and (DELIVERED_ONCE or redis.call('ZADD', ids_key, 'NX', numeral(now), id) == 1) then
      local b = math.floor(ts / size)
      weights[b] = (weights[b] or 0) + lines[i + 5]  -- its weight (1 but for distinct rules)
      if not fresh[b] or ts > fresh[b] then fresh[b] = ts end
      if lines[i + 2] ~= '' then texts[#texts + 1] = lines[i + 2] end
      added = true
    end
  end
  local ttl = math.ceil(g.span) + 60
  if added then
    -- One HINCRBY per bucket (a group's failures are mostly in one).
    for b, weight in pairs(weights) do redis.call('HINCRBY', buckets_key, numeral(b), numeral(weight)) end
    if not DELIVERED_ONCE then redis.call('EXPIRE', ids_key, math.ceil(horizon) + 60) end
    if #texts > 0 then
      local kept = redis.call('RPUSH', lines_key, unpack(texts, math.max(1, #texts - SLOW_LINES + 1)))
      if kept > SLOW_LINES then redis.call('LTRIM', lines_key, numeral(-SLOW_LINES), '-1') end
    end
    local first_kept, total = math.floor(oldest / size), 0
    local stored = redis.call('HGETALL', buckets_key)
    for i = 1, #stored, 2 do
      if tonumber(stored[i]) < first_kept then
        redis.call('HDEL', buckets_key, stored[i])
      else
        total = total + tonumber(stored[i + 1])
      end
    end
    -- No stretch holds more than every bucket kept: most windows are not searched.
    local counts, found = {}, nil
    if total >= g.threshold then
      for i = 1, #stored, 2 do
        local b = tonumber(stored[i])
        if b >= first_kept then counts[b] = tonumber(stored[i + 1]) end
      end
      found = slow_crossing(counts, fresh, n, g.threshold)
    end
    if found then
      local c = crossing_of(g, now, found.trigger)
      c.first, c.failures, c.lines = found.first * size, found.failures, redis.call('LRANGE', lines_key, '0', '-1')
      pending = on_crossing(at, c, nil, nil, state_key) or pending
      -- Failures up to the trigger's bucket no longer count (the bucket's
      -- later ones, if any, go with it: a bucket is the window's grain).
      redis.call('HSET', state_key, 'reset', found.trigger)
      redis.call('EXPIRE', state_key, ttl)
      local last = math.floor(found.trigger / size)
      for b in pairs(counts) do
        if b <= last then redis.call('HDEL', buckets_key, b) end
      end
      redis.call('DEL', lines_key)
    else
      redis.call('EXPIRE', lines_key, ttl)
    end
    redis.call('EXPIRE', buckets_key, ttl)
  end
  if pending then redis.call('EXPIRE', state_key, RECORD_GRACE) end
  return pending or nil
end

-- Distinct windows -----------------------------------------------------------
--
-- A distinct window counts the different values an address's failures
-- capture (request paths answered 404), not the failures: it holds one
-- member per value, "WEIGHT:DIGEST" (the detector hashes the value, so no
-- client text becomes a member and each costs the same few bytes), scored
-- by the latest time the value was seen. A value seen again only moves its
-- time; a redelivered line changes nothing (its time is not later). It
-- crosses when the weights of the values seen within `span` of one another
-- reach the threshold. A window keeps its latest MAX_DISTINCT values.
-- Its window-conns key is not used: the kind has no connections.

local function weight_of(member)
  return tonumber(member:match('^(%d+):'))
end

-- The latest value that completes a `span`-long stretch of values weighing
-- `threshold` or more, one of them `fresh` (their times, sorted); nil if
-- none. `crossing`, with weights.
local function distinct_crossing(window_key, fresh, span, threshold)
  local found = redis.call('ZRANGEBYSCORE', window_key, fresh[1] - span, fresh[#fresh] + span, 'WITHSCORES')
  local times, weights = {}, {}
  for i = 1, #found, 2 do
    times[#times + 1] = tonumber(found[i + 1])
    weights[#weights + 1] = weight_of(found[i])
  end
  local trigger, f, lo, sum = nil, 1, 1, 0
  for hi = 1, #times do
    sum = sum + weights[hi]
    while times[hi] - times[lo] > span do
      sum = sum - weights[lo]
      lo = lo + 1
    end
    if sum >= threshold then
      while f <= #fresh and fresh[f] < times[lo] do f = f + 1 end
      while f <= #fresh and fresh[f] <= times[hi] do trigger = times[hi]; f = f + 1 end
    end
  end
  return trigger
end

-- record_group for a distinct window (same keys, same answer).
local function record_distinct(keys, at, g, lines, now, on_crossing)
  local window_key, lines_key, state_key = keys[at + WINDOW], keys[at + LINES], keys[at + STATE]
  local state = redis.call('HMGET', state_key, 'reset', 'pending')
  local reset, pending = tonumber(state[1] or '-1'), state[2]
  local oldest = now - g.span
  local fresh, texts = {}, {}
  for i = 1, #lines, FIELDS do
    local ts, weight, value = math.min(lines[i + 1], now), lines[i + 5], lines[i + 6]
    if value ~= '' and ts >= oldest and ts > reset then
      local member = weight .. ':' .. value
      local seen = redis.call('ZSCORE', window_key, member)
      if not seen or tonumber(seen) < ts then
        redis.call('ZADD', window_key, ts, member)
        fresh[#fresh + 1] = ts
        -- The evidence: the first line of each value.
        if not seen then texts[#texts + 1] = lines[i + 2] end
      end
    end
  end
  local ttl = math.ceil(g.span) + 60
  if #fresh > 0 then
    table.sort(fresh)
    if #texts > 0 then
      redis.call('RPUSH', lines_key, unpack(texts, math.max(1, #texts - MAX_LINES + 1)))
      redis.call('LTRIM', lines_key, numeral(-MAX_LINES), '-1')
    end
    redis.call('ZREMRANGEBYSCORE', window_key, '-inf', '(' .. oldest)
    redis.call('ZREMRANGEBYRANK', window_key, 0, -(MAX_DISTINCT + 1))
    local trigger = distinct_crossing(window_key, fresh, g.span, g.threshold)
    if trigger then
      pending = on_crossing(at, crossing_of(g, now, trigger), window_key, lines_key, state_key) or pending
      -- As a sliding window: values seen up to the trigger no longer count.
      redis.call('HSET', state_key, 'reset', trigger)
      redis.call('EXPIRE', state_key, ttl)
      redis.call('ZREMRANGEBYSCORE', window_key, '-inf', trigger)
      redis.call('DEL', lines_key)
    else
      redis.call('EXPIRE', lines_key, ttl)
    end
    redis.call('EXPIRE', window_key, ttl)
  end
  if pending then redis.call('EXPIRE', state_key, RECORD_GRACE) end
  return pending or nil
end

-- One group's failures into its window. A crossing goes to
-- `on_crossing(at, crossing, window_key, lines_key, state_key)` while the
-- window still holds its failures; what that returns becomes the window's
-- pending crossing. Returns the pending crossing, if any (a new one, or one
-- still waiting for its ban).
--
-- `connection` names the connection a failure belongs to (host, source, pid;
-- "" for none), `once` marks a line that is a failure only if its connection
-- has no other (sshd's "Connection closed by authenticating user"). A
-- replica can only judge that for the lines it saw itself; a connection cut
-- by a batch boundary may have its other failures at another replica, read
-- before or after. So the window keeps, per connection, what it counted: a
-- `once` line of a connection already counted is dropped, and a failure of
-- a connection whose `once` line was counted takes that line's place.
local function record_group(keys, at, g, lines, now, on_crossing)
  if g.mode == 'distinct' then return record_distinct(keys, at, g, lines, now, on_crossing) end
  if g.mode == 'slow' then return record_slow(keys, at, g, lines, now, on_crossing) end
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
  for i = 1, #lines, FIELDS do
    local id, ts, connection, once = lines[i], math.min(lines[i + 1], now), lines[i + 3], lines[i + 4]
    local counts = ts >= oldest and ts > reset
    if counts and connection ~= '' then
      -- What the connection counted: '!', or the id of its `once` line. A
      -- connection's first line (most of them) takes one HSETNX.
      if once then
        counts = redis.call('HSETNX', conns_key, connection, id) == 1
        conns_changed = conns_changed or counts
      elseif redis.call('HSETNX', conns_key, connection, '!') == 1 then
        conns_changed = true
      else
        local counted = redis.call('HGET', conns_key, connection)
        if counted ~= '!' then
          redis.call('ZREM', window_key, counted)
          redis.call('HSET', conns_key, connection, '!')
          conns_changed = true
        end
      end
    end
    if counts and redis.call('ZADD', window_key, 'NX', numeral(ts), id) == 1 then
      fresh[#fresh + 1] = ts
      if lines[i + 2] ~= '' then texts[#texts + 1] = lines[i + 2] end  -- '': a weighted line's copy
    end
  end

  local ttl = math.ceil(reach) + 60
  if #fresh > 0 then
    table.sort(fresh)
    -- Only the last MAX_LINES are kept (and Lua's `unpack` has a size limit).
    if #texts > 0 then
      local kept = redis.call('RPUSH', lines_key, unpack(texts, math.max(1, #texts - MAX_LINES + 1)))
      if kept > MAX_LINES then redis.call('LTRIM', lines_key, numeral(-MAX_LINES), '-1') end
    end
    redis.call('ZREMRANGEBYSCORE', window_key, '-inf', below(oldest))
    local trigger = nil
    if g.mode == 'instant' then
      trigger = fresh[#fresh]
    elseif g.mode == 'sliding' then
      -- A window holding fewer failures than the threshold has no stretch to read.
      if redis.call('ZCARD', window_key) >= g.threshold then
        trigger = crossing(window_key, fresh, g.span, g.threshold)
      end
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
      -- A crossing not yet confirmed gives way to a later one kept: the ban
      -- it would add is at most the same ban, decided again.
      pending = on_crossing(at, crossing_of(g, now, trigger), window_key, lines_key, state_key) or pending
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
  end
  return pending or nil  -- (HMGET's missing field is false, which a table would keep)
end

-- The duration of crossing `c`'s ban of `address` (escalated by its ban
-- count), or nil: while a ban is in force, crossing a threshold again
-- decides nothing, unless the new ban is longer (recidive, or a rule with a
-- longer bantime). Also whether the address may be in the active set
-- (write_ban's `listed`). `current`: its score in the active set if read
-- already (false: none), else nil.
local function ban_duration(s, ban_key, count_key, c, address, now, current)
  if current == nil then current = redis.call('ZSCORE', s.active, address) end
  local held = nil
  if current and (current == 'inf' or tonumber(current) > now) then
    if current == 'inf' then return end
    held = held_duration(ban_key, address, tonumber(current))
    -- Held at least as long as any ban of `c`, whatever the count: not read.
    if c.bantime >= 0 and (held < 0 or held >= longest(c)) then return end
  end
  local count = tonumber(redis.call('GET', count_key) or '0') + 1
  local duration = escalated(c.bantime, c.factor, c.maxtime, count)
  if held and duration >= 0 and (held < 0 or duration <= held) then return end
  return duration, current ~= false
end

-- A crossing's ports ("22,2222") as the list write_ban takes.
local function ports_of(c)
  local ports = {}
  for p in string.gmatch(c.ports, '%d+') do ports[#ports + 1] = tonumber(p) end
  return ports
end

-- A crossing, judged: ban, unless a ban at least as long is in force.
-- `window_key`, `lines_key`: the window that crossed, when `c` has not read
-- it yet (with_details). Returns the ban's duration, or nil if it did not ban.
local function ban_from_crossing(s, ban_key, count_key, c, now, window_key, lines_key)
  local duration, listed = ban_duration(s, ban_key, count_key, c, c.address, now)
  if not duration then return end
  local first, failures, lines = c.first, c.failures, c.lines
  if window_key then first, failures, lines = window_details(window_key, lines_key, c.trigger) end
  local rec = {
    address = c.address, rule = c.rule, host = c.host, origin = 'detector',
    banned_at = now, duration = duration, first_failure = first, last_failure = c.trigger,
    failures = failures, lines = lines, reason = failures .. ' failures of ' .. c.rule,
    window = c.mode or 'recidive',
  }
  if duration >= 0 then rec.expires_at = now + duration end
  write_ban(s, ban_key, count_key, rec, ports_of(c), c.verdict, c.memory, listed)
  if s.net then widen(s, s.net, rec, now) end
  return duration
end

-- Every ban by another rule is a failure of the recidive rule: repeat
-- offenders get its (long) ban once they reach its threshold. `c` banned;
-- its failure in the recidive window is named by its rule and time, so
-- counting it again adds nothing. Returns the recidive window's crossing
-- (details read), if this made one.
local function count_for_recidive(window_key, lines_key, recidive, c)
  local g = with_thresholds({rule = 'recidive', address = c.address, host = c.host}, recidive, 1)
  local now = c.at
  -- Counted before (a step repeated after a crash): the count, and so its crossing, is as it was.
  if redis.call('ZADD', window_key, 'NX', now, c.rule .. '@' .. string.format('%.17g', now)) == 0 then return end
  redis.call('RPUSH', lines_key, 'banned by ' .. c.rule)
  redis.call('LTRIM', lines_key, numeral(-MAX_LINES), '-1')
  redis.call('ZREMRANGEBYSCORE', window_key, '-inf', '(' .. (now - g.span))
  if redis.call('ZCOUNT', window_key, now - g.span, now) >= g.threshold then
    local again = with_details(crossing_of(g, now, now), window_key, lines_key)
    redis.call('DEL', window_key, lines_key)
    return again
  end
  redis.call('EXPIRE', window_key, math.ceil(g.span) + 60)
  redis.call('EXPIRE', lines_key, math.ceil(g.span) + 60)
end

-- A window call's ARGV (both take the same): now, the recidive settings
-- (nil when that rule is off), the groups.
local function window_call(args)
  return tonumber(args[1]), args[2] ~= '' and cmsgpack.unpack(args[2]) or nil, cmsgpack.unpack(args[3])
end

-- A group's lines: its own, or those of the call's group they are the same
-- as (a number: that group's place; the slow window's group counts the
-- address group's lines, sent once).
local function lines_of(groups, h)
  local lines = h[13]
  if type(lines) == 'number' then return groups[lines][13] end
  return lines
end

-- A group's rule, address, host that saw its lines, window kind, thresholds.
local function group_of(h)
  -- h[14]: a window kind's own settings (slow: {bucket, horizon}). One
  -- constructor (with_thresholds' fields too): a table grown field by field
  -- is rehashed as it grows.
  return {rule = h[1], address = h[2], host = h[3], mode = h[4], threshold = h[5], span = h[6], bantime = h[7],
          factor = h[8], maxtime = h[9], memory = h[10], verdict = h[11], ports = h[12], extra = h[14]}
end

-- Redis Cluster, step 1.
-- KEYS: per group its window, window-lines, window-state, window-conns, and
-- when the recidive rule is on, the address's recidive window-state (one
-- address's keys, so on Redis Cluster a call holds the groups of one slot).
-- ARGV: now, recidive settings (empty when that rule is off), then the
-- groups packed as one MessagePack array (one C call to unpack, instead of
-- a protocol argument per field). A group is one rule, address and host
-- that saw the lines: {rule, address, host, mode, threshold, span, bantime,
-- factor, maxtime, memory, verdict, ports, lines}, where `lines` is a flat
-- array of (line id, log time, text, connection, once, weight, value) for
-- each failure (`value`: the digest a distinct window counts, or "").
-- `lines` may instead be the place (1-based) of an earlier group of the call
-- with the same lines (lines_of).
-- The recidive settings are a group's threshold..ports, packed the same way.
-- Returns the pending crossings of these windows (packed; for ban_crossings).
local function record_failures(keys, args)
  local now, recidive, groups = window_call(args)
  local per_group = recidive and RECIDIVE_STATE or CONNS
  local results = {}
  for i, h in ipairs(groups) do
    local at = (i - 1) * per_group
    results[#results + 1] = record_group(keys, at, group_of(h), lines_of(groups, h), now, keep_crossing)
    if recidive then
      results[#results + 1] = redis.call('HGET', keys[at + RECIDIVE_STATE], 'pending') or nil
    end
  end
  return results
end

-- A single Redis: steps 1, 2 and 3 in one call, nothing kept in between.
-- KEYS: active, scopes, history, decisions, then per group its window,
-- window-lines, window-state, window-conns, the address's ban record and
-- ban count, and when the recidive rule is on, the address's recidive
-- window-state, window and window-lines, then the per-network keys (if any).
-- ARGV: as record_failures, then the network payload ("" or absent: none).
-- Returns {bans, pending}: "address rule duration" for each ban written,
-- and the pending crossings found in these windows (packed), which only
-- the three calls leave (a detector of the version before this function,
-- stopped between two of them): they go on through ban_crossings.
local function record_and_ban(keys, args)
  local s = shared(keys)
  local now, recidive, groups = window_call(args)
  s.net = network_of(keys, args[4])
  local banned, pending = {}, {}
  local function ban_now(at, c, window_key, lines_key)
    local duration = ban_from_crossing(s, keys[at + BAN], keys[at + COUNT], c, now, window_key, lines_key)
    if not duration then return end
    banned[#banned + 1] = c.address .. ' ' .. c.rule .. ' ' .. duration
    if recidive and c.rule ~= 'recidive' then
      local again = count_for_recidive(keys[at + RECIDIVE_WINDOW], keys[at + RECIDIVE_LINES], recidive, c)
      if again then ban_now(at, again) end
    end
  end
  local per_group = recidive and RECIDIVE_LINES or COUNT
  for i, h in ipairs(groups) do
    local at = SHARED + (i - 1) * per_group
    pending[#pending + 1] = record_group(keys, at, group_of(h), lines_of(groups, h), now, ban_now)
    if recidive then
      pending[#pending + 1] = redis.call('HGET', keys[at + BANNING_RECIDIVE_STATE], 'pending') or nil
    end
  end
  return {banned, pending}
end

-- Redis Cluster, step 2.
-- KEYS: active, scopes, history, decisions, then per crossing its address's
-- ban record, ban count and crossed (the ban side: one slot), then the
-- per-network keys (if any).
-- ARGV: now, the network payload ("": none), then the crossings as
-- record_failures returned them.
-- Returns per crossing the duration of its ban, or '' if it did not ban;
-- a crossing judged before gets the same answer again, and changes nothing.
local function ban_crossings(keys, args)
  local s = shared(keys)
  local now = tonumber(args[1])
  s.net = network_of(keys, args[2])
  local results = {}
  for i = 3, #args do
    local c = cmsgpack.unpack(args[i])
    local at = SHARED + (i - 3) * 3
    local ban_key, count_key, crossed_key = keys[at + 1], keys[at + 2], keys[at + 3]
    local trigger = string.format('%.17g', c.trigger)
    local field = c.rule
    if c.mode == 'slow' then field = c.rule .. ' slow' end  -- judged apart from the rule's other window
    local judged = redis.call('HGET', crossed_key, field)
    if judged and tonumber(string.match(judged, '^%S+')) >= c.trigger then
      results[#results + 1] = string.match(judged, ' (.*)$')
    else
      local duration = ban_from_crossing(s, ban_key, count_key, c, now)
      local answer = duration and tostring(duration) or ''
      redis.call('HSET', crossed_key, field, trigger .. ' ' .. answer)
      -- Longer than a pending crossing is kept (RECORD_GRACE).
      redis.call('EXPIRE', crossed_key, 2 * RECORD_GRACE)
      results[#results + 1] = answer
    end
  end
  return results
end

-- Redis Cluster, step 3.
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
        local again = count_for_recidive(keys[at + 2], keys[at + 3], recidive, c)
        if again then
          results[#results + 1] = keep(keys[at + 4], again)
          redis.call('EXPIRE', keys[at + 4], RECORD_GRACE)
        end
      end
    end
  end
  return results
end

-- Per-account windows --------------------------------------------------------
--
-- One account of one service (the user name its rule captures) over every
-- host: a botnet spreads a password list over many addresses, each failing
-- too rarely for its own window. When `failures` failures on the account,
-- from at least `addresses` distinct addresses, fall within `span`, every
-- address that failed on it in that span is banned, except those that
-- logged in as the account within `success_memory`. The account itself is
-- never locked. Keys name the account by a hash (keys.py, account_id): the
-- attacker's text never shapes a key. The window keeps the newest
-- ACCOUNT_KEEP failures and the logins the newest ACCOUNT_LOGINS_KEEP
-- addresses, whatever is sent.
-- Idempotent per line id, as the address windows: a failure is a member
-- named by its line id (and address), failures at or before the window's
-- last crossing are ignored, a login keeps its latest time.
-- An account's ban counts as any ban: in its address's recidive window and,
-- where bans widen, in its networks.
-- On a single Redis record_accounts bans at once (one call), recidive
-- included. On Cluster the window is in the account's slot and the bans on
-- the ban side: a crossing is kept pending in the window's state (as an
-- address window's), banned (and widened) by ban_account_crossings, counted
-- for recidive in each address's slot by count_account_bans, then confirmed
-- by confirm_account_crossings; each is harmless to repeat. Bans that widen
-- take the Cluster's way on a single Redis too: the networks an address
-- counts in are planned in Python (ledger.py's network payload), so only for
-- addresses known before the call, a crossing's once it is kept.

local ACCOUNT_LOGINS_KEEP = 256
-- A crossing judges at most ACCOUNT_KEEP addresses (late evidence included: a flood
-- in one second of log time would otherwise grow it without end), and each of its
-- ban records names the first EVIDENCE_SHOWN (the reason says how many in all).
local EVIDENCE_SHOWN = 100
local ACCOUNT_KEYS = 4  -- per group: window, lines, state, logins (the account's slot)

-- An account group as Python packs it (windows.py): the rule, account, host
-- that saw the lines; failures, addresses, span, success_memory; bantime,
-- factor, maxtime, memory, verdict, ports; `lines`, a flat array of (line id,
-- log time, address, text) per failure; `logins`, of (address, log time)
-- per successful login; and the account's id (its keys' name).
local function account_group_of(h)
  return {rule = h[1], account = h[2], host = h[3], failures = h[4], addresses = h[5], span = h[6],
          success_memory = h[7], bantime = h[8], factor = h[9], maxtime = h[10], memory = h[11],
          verdict = h[12], ports = h[13], lines = h[14], logins = h[15], id = h[16]}
end

local function remember_logins(logins_key, g, now)
  local logins = g.logins
  if #logins == 0 then return end
  for i = 1, #logins, 2 do
    redis.call('ZADD', logins_key, 'GT', numeral(math.min(logins[i + 1], now)), logins[i])
  end
  redis.call('ZREMRANGEBYSCORE', logins_key, '-inf', below(now - g.success_memory))
  redis.call('ZREMRANGEBYRANK', logins_key, '0', numeral(-(ACCOUNT_LOGINS_KEEP + 1)))
  redis.call('EXPIRE', logins_key, g.success_memory)
end

-- The window's failures in time order (ZRANGE WITHSCORES), and the last
-- stretch of at most `span` holding `failures` failures from `addresses`
-- addresses: its first and last index (nil if none). One pass: a window
-- holds at most ACCOUNT_KEEP failures.
local function account_stretch(entries, g)
  local times, addrs = {}, {}
  for i = 1, #entries, 2 do
    times[#times + 1] = tonumber(entries[i + 1])
    addrs[#addrs + 1] = string.match(entries[i], ' (%S+)$')
  end
  local seen, distinct, lo, first, last = {}, 0, 1, nil, nil
  for hi = 1, #times do
    local a = addrs[hi]
    seen[a] = (seen[a] or 0) + 1
    if seen[a] == 1 then distinct = distinct + 1 end
    while times[hi] - times[lo] > g.span do
      local b = addrs[lo]
      seen[b] = seen[b] - 1
      if seen[b] == 0 then distinct = distinct - 1 end
      lo = lo + 1
    end
    if hi - lo + 1 >= g.failures and distinct >= g.addresses then first, last = lo, hi end
  end
  return first, last, times, addrs
end

-- Whether `address` logged in as the account within success_memory before
-- `trigger`. `any`: whether anyone did (an account most often has no logins:
-- one EXISTS per crossing, not a ZSCORE per address).
local function logged_in(logins_key, any, address, trigger, g)
  if not any then return false end
  local login = redis.call('ZSCORE', logins_key, address)
  return login and tonumber(login) >= trigger - g.success_memory
end

-- The crossing of stretch first..last: what its bans need, the addresses
-- it bans (`evidence`: each that failed in it), and those it spares
-- (`spared`: they logged in as the account).
local function account_crossing_of(g, now, times, addrs, first, last, logins_key, lines_key)
  local trigger = times[last]
  local evidence, spared, listed = {}, {}, {}
  local any = redis.call('EXISTS', logins_key) == 1
  for i = first, last do
    local a = addrs[i]
    if not listed[a] then
      listed[a] = true
      if logged_in(logins_key, any, a, trigger, g) then spared[#spared + 1] = a else evidence[#evidence + 1] = a end
    end
  end
  return {id = g.id, rule = g.rule, account = g.account, host = g.host, trigger = trigger, at = now,
          span = g.span, bantime = g.bantime, factor = g.factor, maxtime = g.maxtime, memory = g.memory,
          verdict = g.verdict, ports = g.ports, evidence = evidence, spared = spared,
          failures = last - first + 1, first = times[first], lines = redis.call('LRANGE', lines_key, '0', '-1')}
end

-- Failures read after their window crossed (another replica's batch, read
-- later; a redelivery) that fall in the crossed window, from addresses the
-- crossing has not judged: they join its evidence, so the same addresses
-- are banned whatever order replicas read the lines in. Returns the
-- crossing (changed) and the addresses added, or nil if none.
local function late_evidence(c, late, logins_key, g)
  local known = {}
  for _, a in ipairs(c.evidence) do known[a] = true end
  for _, a in ipairs(c.spared) do known[a] = true end
  local added = {}
  local any = redis.call('EXISTS', logins_key) == 1
  for _, a in ipairs(late) do
    if not known[a] and #c.evidence + #c.spared < ACCOUNT_KEEP then
      known[a] = true
      c.failures = c.failures + 1
      if logged_in(logins_key, any, a, c.trigger, g) then
        c.spared[#c.spared + 1] = a
      else
        c.evidence[#c.evidence + 1] = a
        added[#added + 1] = a
      end
    end
  end
  if #added > 0 then return c, added end
end

-- One account group into its window (keys from `at`). A crossing, or late
-- evidence of the last one, goes to `on_crossing(c, state_key, addresses)`
-- (the addresses to ban), whose answer becomes the window's pending
-- crossing. Returns the pending crossing, if any.
local function record_account_group(keys, at, g, now, on_crossing)
  local window_key, lines_key = keys[at + 1], keys[at + 2]
  local state_key, logins_key = keys[at + 3], keys[at + 4]
  remember_logins(logins_key, g, now)
  local state = redis.call('HMGET', state_key, 'reset', 'pending', 'crossing')
  local reset, pending, crossed = tonumber(state[1] or '-1'), state[2], state[3]
  -- Most accounts' windows never crossed: no state to keep alive.
  local has_state = (state[1] or state[2] or state[3]) and true
  local oldest = now - g.span
  local lines, texts, late = g.lines, {}, {}
  for i = 1, #lines, 4 do
    local ts = math.min(lines[i + 1], now)
    if ts > reset then
      if ts >= oldest and redis.call('ZADD', window_key, 'NX', numeral(ts), lines[i] .. ' ' .. lines[i + 2]) == 1 then
        texts[#texts + 1] = lines[i + 3]
      end
    elseif crossed and ts >= reset - g.span then
      late[#late + 1] = lines[i + 2]
    end
  end
  local ttl = math.ceil(g.span) + 60
  if #late > 0 then
    local c, added = late_evidence(cmsgpack.unpack(crossed), late, logins_key, g)
    if c then
      local packed = cmsgpack.pack(c)
      redis.call('HSET', state_key, 'crossing', packed)
      pending = on_crossing(c, state_key, added) or pending
    end
  end
  if #texts > 0 then
    local kept = redis.call('RPUSH', lines_key, unpack(texts, math.max(1, #texts - MAX_LINES + 1)))
    if kept > MAX_LINES then redis.call('LTRIM', lines_key, numeral(-MAX_LINES), '-1') end
    redis.call('ZREMRANGEBYSCORE', window_key, '-inf', below(oldest))
    local held = redis.call('ZCARD', window_key)
    if held > ACCOUNT_KEEP then redis.call('ZREMRANGEBYRANK', window_key, 0, -(ACCOUNT_KEEP + 1)) end
    -- Fewer failures than `failures` hold no stretch: most accounts' windows are not read.
    local first, last, times, addrs
    if held >= g.failures then
      first, last, times, addrs = account_stretch(redis.call('ZRANGE', window_key, '0', '-1', 'WITHSCORES'), g)
    end
    if last then
      local c = account_crossing_of(g, now, times, addrs, first, last, logins_key, lines_key)
      pending = on_crossing(c, state_key, c.evidence) or pending
      redis.call('HSET', state_key, 'reset', c.trigger, 'crossing', cmsgpack.pack(c))
      has_state = true
      redis.call('ZREMRANGEBYSCORE', window_key, '-inf', c.trigger)
      redis.call('DEL', lines_key)
    else
      redis.call('EXPIRE', lines_key, ttl)
    end
    redis.call('EXPIRE', window_key, ttl)
  end
  if has_state and (#texts > 0 or #late > 0) then redis.call('EXPIRE', state_key, ttl) end
  if pending then redis.call('EXPIRE', state_key, RECORD_GRACE) end
  return pending or nil
end

-- A crossing's ban of one of its addresses, unless a ban at least as long
-- is in force. Returns the ban's duration, or nil if it did not ban.
-- `current`: as ban_duration's.
local function ban_for_account(s, ban_key, count_key, c, address, now, current)
  local duration, listed = ban_duration(s, ban_key, count_key, c, address, now, current)
  if not duration then return end
  local reason = c.failures .. ' failures of ' .. c.rule .. ' on one account from ' .. (#c.evidence + #c.spared)
                 .. ' addresses'
  if #c.spared > 0 then reason = reason .. ' (' .. #c.spared .. ' spared: they logged in as it)' end
  local evidence = c.evidence
  if #evidence > EVIDENCE_SHOWN then evidence = {unpack(evidence, 1, EVIDENCE_SHOWN)} end
  local rec = {
    address = address, rule = c.rule, host = c.host, origin = 'detector', banned_at = now,
    duration = duration, first_failure = c.first, last_failure = c.trigger, failures = c.failures,
    lines = c.lines, reason = reason, window = 'account', account = c.account, evidence = evidence,
  }
  if duration >= 0 then rec.expires_at = now + duration end
  write_ban(s, ban_key, count_key, rec, ports_of(c), c.verdict, c.memory, listed)
  if s.net then widen(s, s.net, rec, now) end
  return duration
end

-- A crossing's ban of `address` as the recidive window counts it (count_for_recidive):
-- named by the crossing's rule and time, so counting it again adds nothing.
local function account_ban(c, address)
  return {address = address, rule = c.rule, host = c.host, at = c.at}
end

-- A key of one address, from its template as keys.py cuts it (ledger.py sends them).
local function named(template, address)
  return template[1] .. address .. template[2]
end

-- Account groups into their windows.
-- ARGV: now, '1' to ban at once (a single Redis) or '' to keep crossings
-- pending (Cluster, or bans that widen: ledger.py), the groups packed as one
-- MessagePack array; banning at once, also the recidive settings ('' when
-- that rule is off) and the templates of the keys of a banned address
-- (packed: its ban record, ban count, recidive window and window-lines).
-- KEYS, banning at once: the SHARED keys, then per group its window, lines,
-- state and logins. On a single Redis every key is in one place, and which
-- addresses a crossing bans is known only here: their keys are made from
-- keys.py's templates (the one place in the library that makes a key name).
-- Keeping: per group its four keys only (one account's: one slot).
-- Returns, banning: {"address rule duration" per ban, pending crossings
-- left by the three calls}; keeping: the pending crossings.
local function record_accounts(keys, args)
  local now, ban_now, groups = tonumber(args[1]), args[2] == '1', cmsgpack.unpack(args[3])
  if not ban_now then
    local pending = {}
    local function keep_account(c, state_key) return keep(state_key, c) end
    for i, h in ipairs(groups) do
      pending[#pending + 1] = record_account_group(keys, (i - 1) * ACCOUNT_KEYS, account_group_of(h), now,
                                                   keep_account)
    end
    return pending
  end
  local s = shared(keys)
  local recidive = args[4] ~= '' and cmsgpack.unpack(args[4]) or nil
  local t = cmsgpack.unpack(args[5])
  local ban_t, count_t, recidive_t, recidive_lines_t = {t[1], t[2]}, {t[3], t[4]}, {t[5], t[6]}, {t[7], t[8]}
  local banned, pending = {}, {}
  local function ban_all(c, _, addresses)
    if #addresses == 0 then return end
    -- Most of a crossing's addresses are banned already: their bans in force
    -- in one read (the addresses are distinct, and banning one changes no
    -- other's score).
    local current = redis.call('ZMSCORE', s.active, unpack(addresses))
    for i, address in ipairs(addresses) do
      local ban_key, count_key = named(ban_t, address), named(count_t, address)
      local duration = ban_for_account(s, ban_key, count_key, c, address, now, current[i])
      if duration then
        banned[#banned + 1] = address .. ' ' .. c.rule .. ' ' .. duration
        local again = recidive and count_for_recidive(named(recidive_t, address), named(recidive_lines_t, address),
                                                      recidive, account_ban(c, address))
        if again then
          duration = ban_from_crossing(s, ban_key, count_key, again, now)
          if duration then banned[#banned + 1] = address .. ' recidive ' .. duration end
        end
      end
    end
  end
  for i, h in ipairs(groups) do
    pending[#pending + 1] = record_account_group(keys, SHARED + (i - 1) * ACCOUNT_KEYS, account_group_of(h),
                                                 now, ban_all)
  end
  return {banned, pending}
end

-- Redis Cluster, step 2 for account windows (and a single Redis whose
-- bans widen: which networks an address counts in is planned in Python).
-- KEYS: the SHARED keys, then per crossing the account's crossed key and
-- each of its addresses' ban record and count (the ban side: one slot),
-- then the per-network keys (if any).
-- ARGV: now, the network payload ("": none), then the crossings as
-- record_accounts returned them.
-- Returns per crossing {the bans it wrote, the bans an earlier judgement of
-- it wrote}, "address duration" per line (both count for recidive: step 3).
-- `crossed` keeps, per address, "TRIGGER DURATION" of the crossing that
-- judged it (DURATION empty: it did not ban): a crossing handed back again
-- (a crash; late evidence added) judges only the addresses it has not
-- judged yet.
local function ban_account_crossings(keys, args)
  local s = shared(keys)
  local now = tonumber(args[1])
  s.net = network_of(keys, args[2])
  local at = SHARED
  local results = {}
  for i = 3, #args do
    local c = cmsgpack.unpack(args[i])
    local crossed_key = keys[at + 1]
    local trigger = string.format('%.17g', c.trigger)
    local bans, earlier = {}, {}
    for j, address in ipairs(c.evidence) do
      local judged = redis.call('HGET', crossed_key, address)
      if not judged or tonumber(string.match(judged, '^%S+')) < c.trigger then
        local duration = ban_for_account(s, keys[at + 2 * j], keys[at + 2 * j + 1], c, address, now)
        if duration then bans[#bans + 1] = address .. ' ' .. duration end
        redis.call('HSET', crossed_key, address, trigger .. ' ' .. (duration or ''))
      else
        local duration = string.match(judged, ' (%S+)$')
        if duration then earlier[#earlier + 1] = address .. ' ' .. duration end
      end
    end
    if #c.evidence > 0 then redis.call('EXPIRE', crossed_key, 2 * RECORD_GRACE) end
    results[#results + 1] = {table.concat(bans, '\n'), table.concat(earlier, '\n')}
    at = at + 1 + 2 * #c.evidence
  end
  return results
end

-- Redis Cluster, step 3 for account windows: each ban counts in its
-- address's recidive window (the address's slot), as confirm_crossings
-- counts an address window's. Before the crossing is confirmed (step 4): a
-- crash in between counts again, which adds nothing.
-- KEYS: per ban its address's recidive window, window-lines and window-state.
-- ARGV: the recidive settings, then per ban: address, rule, host, the
-- crossing's time (account_ban). Returns the recidive crossings this caused,
-- and those still pending in these windows (packed; for ban_crossings).
local function count_account_bans(keys, args)
  local recidive = cmsgpack.unpack(args[1])
  local results = {}
  for i = 2, #args, 4 do
    local at = (i - 2) / 4 * 3
    local state_key = keys[at + 3]
    local b = {address = args[i], rule = args[i + 1], host = args[i + 2], at = tonumber(args[i + 3])}
    local again = count_for_recidive(keys[at + 1], keys[at + 2], recidive, b)
    if again then
      results[#results + 1] = keep(state_key, again)
      redis.call('EXPIRE', state_key, RECORD_GRACE)
    else
      results[#results + 1] = redis.call('HGET', state_key, 'pending') or nil
    end
  end
  return results
end

-- Redis Cluster, step 4 for account windows: forget the crossings banned.
-- KEYS: per crossing its account's window state. ARGV: the crossings.
local function confirm_account_crossings(keys, args)
  for i = 1, #args do
    if redis.call('HGET', keys[i], 'pending') == args[i] then redis.call('HDEL', keys[i], 'pending') end
  end
  return #args
end

-- (Only `redis` exists while a library loads: no pairs, no math, here.)
redis.register_function(FUNCTION_PREFIX .. 'record_and_ban', record_and_ban)
redis.register_function(FUNCTION_PREFIX .. 'record_failures', record_failures)
redis.register_function(FUNCTION_PREFIX .. 'ban_crossings', ban_crossings)
redis.register_function(FUNCTION_PREFIX .. 'confirm_crossings', confirm_crossings)
redis.register_function(FUNCTION_PREFIX .. 'ban', ban)
redis.register_function(FUNCTION_PREFIX .. 'unban', unban)
redis.register_function(FUNCTION_PREFIX .. 'prune', prune)
redis.register_function(FUNCTION_PREFIX .. 'set_countries', set_countries)
redis.register_function(FUNCTION_PREFIX .. 'index_existing', index_existing)
redis.register_function(FUNCTION_PREFIX .. 'claim_due', claim_due)
redis.register_function(FUNCTION_PREFIX .. 'claim_digest', claim_digest)
redis.register_function(FUNCTION_PREFIX .. 'record_accounts', record_accounts)
redis.register_function(FUNCTION_PREFIX .. 'ban_account_crossings', ban_account_crossings)
redis.register_function(FUNCTION_PREFIX .. 'count_account_bans', count_account_bans)
redis.register_function(FUNCTION_PREFIX .. 'confirm_account_crossings', confirm_account_crossings)
