-- Decide every rate-limit rule of one request atomically.
-- The in-process store (gateway/ratelimit/algorithms.py) implements the same arithmetic
-- step for step; tests/integration/test_ratelimit_stores.py proves they agree.
--
-- KEYS: one per rule, in order.
-- ARGV[1]: "" to read the clock with Redis TIME, or a time in microseconds (tests only).
-- ARGV[2]: "1" commit when admitted, "0" only look (the admin state call), "2" commit and
--   append the script's `now` to an admitting reply (a reservation that may be returned by
--   lua/ratelimit_return.lua: one part of a request decided on several cluster slots).
-- ARGV[3]: per rule, 48 bytes: six little-endian doubles (struct '<dddddd'): algorithm
--   (1 token_bucket, 2 leaky_bucket, 3 sliding_window, 4 fixed_window), limit, burst,
--   window in microseconds, cost, soft (1: a shadow or degrade rule, reported but never
--   blocking the others). One string for all rules: Redis makes a Lua string of every
--   argument on every call.
-- Returns {admitted, then per rule: allowed, remaining, reset_us, retry_us (-1: never)}.
-- Every number is an integer held in a double (exact below 2^53), so the two stores agree
-- to the microsecond. Redis 6.2+ (EVAL/EVALSHA only; effects replication, the default
-- since Redis 5, so TIME is allowed before a write).
--
-- Redis CPU is what this script is tuned for (INFO commandstats, callgrind of redis-server:
-- tests/perf/bench_redis.py). Each rule reads its state with one call and writes it with
-- one (two, once a window, for a sliding window's expiry), every command in O(1). State is
-- kept as packed doubles (struct), not decimal text: Lua's tonumber is a strtod and '%d' a
-- printf, each costlier than the struct call that replaces them (measured in redis-server:
-- tonumber of a 16-digit time 110 ns, struct.unpack of one double 44 ns), and a number
-- handed to redis.call unformatted is printed with '%.17g', costlier still. The few numbers
-- Redis must read (an expiry, an offset) are made with '%d'.
local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local commit = ARGV[2] ~= "0"
local reserving = ARGV[2] == "2"
local call, ceil, floor, format = redis.call, math.ceil, math.floor, string.format
local pack, unpack = struct.pack, struct.unpack
local SLACK_MS = 1000  -- a key outlives the moment it stops mattering by this much
-- A sliding window's log keeps entries that left the window until there are this many and
-- at least as many as live ones, then drops them by rewriting the live part: O(1) per
-- entry over time, and the live total never reads them (see below).
local TRIM_ENTRIES = 32
local ENTRY = 16  -- bytes of a sliding window's log entry (its header: 56)

-- The first entry of a sliding window's log in [lo, hi) whose time (field 1) or running
-- total (field 2) is above `bound`: its index (hi when none is), time and running total,
-- and the running total of the entry before it. The first 16 entries come in one read
-- (the oldest few are what departures and retry times mostly need), the rest by binary
-- search, one entry a read: O(log n) calls at worst, however many entries left at once.
-- A script's functions are made anew on every call, and this one is seldom used: it
-- reaches redis.call, struct, string and math as globals so that making it captures no
-- upvalue (callgrind: the two small helpers it replaced and their upvalues cost ~3,000
-- instructions a decision).
local function search(log, lo, hi, field, bound)
  local last = lo + 16
  if last > hi then last = hi end
  local chunk = redis.call('GETRANGE', log, string.format('%d', lo * 16),
                           string.format('%d', last * 16 - 1))
  local before, pos = nil, 1
  for i = lo, last - 1 do
    local t, c = struct.unpack('<dd', chunk, pos)
    if (field == 1 and t or c) > bound then return i, t, c, before end
    before, pos = c, pos + 16
  end
  local below, above, at, ac = last - 1, hi, nil, nil
  while above - below > 1 do
    local mid = math.floor((below + above) / 2)
    local t, c = struct.unpack('<dd', redis.call('GETRANGE', log, string.format('%d', mid * 16),
                                                 string.format('%d', mid * 16 + 15)))
    if (field == 1 and t or c) > bound then
      above, at, ac = mid, t, c
    else
      below, before = mid, c
    end
  end
  return above, at, ac, before
end

-- The algorithms are inline branches of one loop rather than functions, and an admitting
-- rule leaves its write as four values in `writes` rather than a closure. A write is
-- SETRANGE key offset value (then PEXPIRE key ttl when ttl is set) when it has an offset,
-- else SET key value with PX ttl, or KEEPTTL when ttl is false. A value rewritten whole
-- with its expiry kept goes by SETRANGE at offset 0 rather than SET ... KEEPTTL: its
-- integer reply reaches Lua as a number, SET's +OK as a table made for it, and callgrind
-- counts ~1,500 instructions more per SET. Both tables are made with room for three
-- rules: grown one element at a time, their resizing cost ~9,000 instructions of a 3-rule
-- decision (callgrind).
local out = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
local n = 1
local writes = {false, false, false, false, false, false, false, false, false, false, false,
                false}
local w = 0
local admitted = true
local rules = ARGV[3]
for r = 1, #KEYS do
  local algorithm, limit, burst, window, cost, soft = unpack('<dddddd', rules, r * 48 - 47)
  local key = KEYS[r]
  local allowed, remaining, reset, retry = 0, 0, 0, -1
  local value, offset, ttl
  if algorithm <= 2 then
    -- GCRA with a capacity of `units`: token_bucket (1) has units = limit + burst,
    -- leaky_bucket (2) units = burst + 1. The stored value is the theoretical arrival time
    -- (TAT): the instant the bucket is full again (the emission interval is rounded up to a
    -- whole microsecond), and the millisecond the key expires. The key must outlive its
    -- TAT by the slack (an idle bucket, TAT before now, is no key at all); its expiry is
    -- moved only when it would not, then a slack further, so most writes keep it
    -- (callgrind counts a SET with PX and its formatted TTL ~4,000 instructions dearer).
    local units = burst + 1
    if algorithm == 1 then units = limit + burst end
    local interval = ceil(window / limit)
    local state = call('GET', key)
    local tat, expires = now, 0
    if state then tat, expires = unpack('<dd', state) end
    if tat < now then tat = now end
    local capacity = units * interval
    local new_tat = tat + cost * interval
    local diff = new_tat - now
    if cost <= units and diff <= capacity then
      allowed, remaining, reset, retry = 1, floor((capacity - diff) / interval), diff, 0
      local now_ms, until_ms = floor(now / 1000), ceil(diff / 1000) + SLACK_MS
      if expires >= now_ms + until_ms then
        offset = '0'
      else
        expires, ttl = now_ms + until_ms + SLACK_MS, format('%d', until_ms + SLACK_MS)
      end
      value = pack('<dd', new_tat, expires)
    else
      if cost <= units then retry = diff - capacity end
      remaining, reset = floor((capacity - (tat - now)) / interval), tat - now
    end
  elseif algorithm == 3 then
    -- Sliding window, exact, in one string: a log of 16-byte entries (time, running total
    -- of admitted units up to and including it), one per admitted request in time order,
    -- then a 56-byte header (c, g, live, count, oldest, newest, refreshed): c the running
    -- total, g the running total of the newest entry known to have left the window, `live`
    -- how many entries at the end are not known to have left, `count` the entries in the
    -- log, `oldest` the time of the first of the `live` ones, `newest` the time of the
    -- newest entry that counts units (one returned by lua/ratelimit_return.lua counts
    -- none), `refreshed` the millisecond the key's expiry was last set. An entry counts
    -- while its time is > now - window, so the live units are c - g: reading the header
    -- is one call, and entries are looked at only once `oldest` has left. Entries come in
    -- the order of Redis's clock, which the window assumes does not step back (the search
    -- for departures relies on it). An admission writes its entry and the new header over
    -- the old header: one SETRANGE.
    local units = limit + burst
    local edge = now - window
    local c, g, live, count, oldest, newest, refreshed = 0, 0, 0, 0, 0, 0, nil
    local state = call('GETRANGE', key, '-56', '-1')
    if state ~= "" then
      c, g, live, count, oldest, newest, refreshed = unpack('<ddddddd', state)
    end
    if live > 0 and oldest <= edge then
      local first, at, _, before = search(key, count - live, count, 1, edge)
      live, g, oldest = count - first, before, at or 0
    end
    local total = c - g
    if cost <= units and total + cost <= units then
      allowed, remaining, reset, retry = 1, units - total - cost, window, 0
      if live == 0 then oldest = now end
      local dead = count - live
      -- Both the expiry and `refreshed` move on once a window has passed, to two windows
      -- (plus the slack) ahead: the key outlives every entry by a window at least, and the
      -- expiry is set once a window instead of on every request.
      local now_ms = floor(now / 1000)
      if refreshed == nil or now_ms - refreshed > window / 1000 then
        refreshed, ttl = now_ms, format('%d', ceil(2 * window / 1000) + SLACK_MS)
      end
      if dead >= TRIM_ENTRIES and dead >= live then
        local kept = ''
        if live > 0 then
          kept = call('GETRANGE', key, format('%d', dead * ENTRY),
                      format('%d', count * ENTRY - 1))
        end
        -- The new entry and the header in one pack: '<dd' then '<ddddddd'.
        value = kept .. pack('<ddddddddd', now, c + cost, c + cost, g, live + 1, live + 1,
                             oldest, now, refreshed)
      else
        offset = format('%d', count * ENTRY)
        value = pack('<ddddddddd', now, c + cost, c + cost, g, live + 1, count + 1, oldest,
                     now, refreshed)
      end
    else
      if cost <= units then  -- the oldest live entry whose departure frees enough units
        local first, at = search(key, count - live, count, 2, g + total + cost - units - 1)
        if first < count then retry = at + window - now end
      end
      if newest > edge then reset = newest + window - now end
      remaining = units - total
    end
  else
    -- Fixed window (4), aligned to the epoch: window n covers [n*window, (n+1)*window).
    -- The value: (n, units used in window n).
    local units = limit + burst
    local index = floor(now / window)
    reset = (index + 1) * window - now
    local state = call('GET', key)
    local used, begun = 0, false
    if state then
      local at, n_used = unpack('<dd', state)
      if at == index then used, begun = n_used, true end
    end
    if cost <= units and used + cost <= units then
      allowed, remaining, retry = 1, units - used - cost, 0
      value = pack('<dd', index, used + cost)
      -- The expiry is set by the window's first write: its end plus the slack.
      if begun then offset = '0' else ttl = format('%d', ceil(reset / 1000) + SLACK_MS) end
    else
      if cost <= units then retry = reset end
      remaining = units - used
    end
  end
  if allowed == 1 then
    writes[w + 1], writes[w + 2], writes[w + 3], writes[w + 4] = key, value, offset or false,
                                                                  ttl or false
    w = w + 4
  elseif soft ~= 1 then
    admitted = false
  end
  if remaining < 0 then remaining = 0 end
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = allowed, remaining, reset, retry
  n = n + 4
end
if admitted then
  out[1] = 1
  if commit then
    for i = 1, w, 4 do
      local key, value, offset, ttl = writes[i], writes[i + 1], writes[i + 2], writes[i + 3]
      if offset then
        call('SETRANGE', key, offset, value)
        if ttl then call('PEXPIRE', key, ttl) end
      elseif ttl then
        call('SET', key, value, 'PX', ttl)
      else
        call('SET', key, value, 'KEEPTTL')
      end
    end
  end
  if reserving then
    out[n + 1] = now
    n = n + 1
  end
end
for i = n + 1, 14 do out[i] = nil end  -- the reply ends at the first nil
return out
