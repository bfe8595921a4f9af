-- Decide every rate-limit rule of one request atomically.
-- The in-process store (gateway/ratelimit/algorithms.py) implements the same arithmetic
-- step for step; tests/integration/test_ratelimit_stores.py proves they agree.
--
-- KEYS: per rule in order: one key, or two (log, count) for sliding_window.
-- ARGV[1]: "" to read the clock with Redis TIME, or a time in microseconds (tests only).
-- ARGV[2]: "1" commit when admitted, "0" only look (the admin state call), "2" commit and
--   append the script's `now` to an admitting reply (a reservation that may be returned by
--   lua/ratelimit_return.lua: one part of a request decided on several cluster slots).
-- then 6 per rule: algorithm (1 token_bucket, 2 leaky_bucket, 3 sliding_window,
--   4 fixed_window), limit, burst, window in microseconds, cost, soft (1: a shadow or degrade
--   rule, reported but never blocking the others).
-- Returns {admitted, then per rule: allowed, remaining, reset_us, retry_us (-1: never)}.
-- Every number is an integer held in a double (exact below 2^53), so the two stores agree
-- to the microsecond. Redis 6.2+ (EVAL/EVALSHA only; effects replication, the default
-- since Redis 5, so TIME is allowed before a write).
--
-- Redis CPU is what this script is tuned for (INFO commandstats, tests/perf/bench_redis.py):
-- each redis.call costs about as much as the arithmetic of a rule, so every algorithm reads
-- its state with one call and writes it (with its expiry) with as few as it can.
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
local SLACK_MS = 1000  -- a key outlives the moment it stops mattering by this much
-- A sliding window's log keeps entries that left the window until they add up to this many
-- units, then drops them in one call: the live total never reads them (see below), so
-- dropping them on every request would cost a call for nothing but memory.
local TRIM_UNITS = 32

-- Every number reaches Redis as a string made with '%d': a Lua number given to redis.call
-- or to `..` is printed as a double (glibc's printf_fp, multi-precision arithmetic for a
-- 16-digit microsecond time), a fifth of a decision's instructions in redis-server
-- when measured; '%d' prints the same whole number as an integer. Exact below 2^53.
local function int(x) return format('%d', x) end
local function ttl_ms(us) return int(ceil(us / 1000) + SLACK_MS) end

-- The algorithms are inline branches of one loop rather than functions: a script's
-- functions are made anew on every call, which cost ~0.9 us of a decision's Redis CPU.
-- Each branch reads its state with one call and, when the rule admits, leaves a `write`.
local out = {0}
local writes = {}
local admitted = true
local k = 1
for b = 3, #ARGV, 6 do
  local algorithm = tonumber(ARGV[b])
  local limit, burst = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local window, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local key = KEYS[k]
  local allowed, remaining, reset, retry, write = 0, 0, 0, -1, nil
  if algorithm <= 2 then
    -- GCRA with a capacity of `units`: token_bucket (1) has units = limit + burst,
    -- leaky_bucket (2) units = burst + 1. The stored value is the theoretical arrival time
    -- (TAT): the instant the bucket is full again. The emission interval is rounded up to a
    -- whole microsecond.
    local units = burst + 1
    if algorithm == 1 then units = limit + burst end
    local interval = ceil(window / limit)
    local tat = tonumber(call('GET', key)) or now
    if tat < now then tat = now end
    local capacity = units * interval
    local new_tat = tat + cost * interval
    local diff = new_tat - now
    if cost <= units and diff <= capacity then
      allowed, remaining, reset, retry = 1, floor((capacity - diff) / interval), diff, 0
      write = function() call('SET', key, int(new_tat), 'PX', ttl_ms(diff)) end
    else
      if cost <= units then retry = diff - capacity end
      remaining, reset = floor((capacity - (tat - now)) / interval), tat - now
    end
    k = k + 1
  elseif algorithm == 3 then
    -- Sliding window, exact. The log: one sorted-set member per admitted request, scored by
    -- its time and named by the running total of admitted units up to and including it
    -- (names are unique and rising). The count "c t r": c the running total, t the running
    -- total of the entries trimmed from the log, r the millisecond both keys' expiry was
    -- last set.
    -- An entry counts while its score is > now - window, so the live units are c minus the
    -- running total of the newest entry that has left the window (t if the log holds none
    -- any more): one read, however many entries left.
    local log, count = key, KEYS[k + 1]
    local units = limit + burst
    local edge = now - window
    local c, trimmed, refreshed = 0, 0, nil
    local state = call('GET', count)
    if state then
      local c_, t_, r_ = string.match(state, '^(%d+) (%d+) (%d+)$')
      c, trimmed, refreshed = tonumber(c_), tonumber(t_), tonumber(r_)
    end
    local gone = trimmed
    local left = call('ZREVRANGEBYSCORE', log, int(edge), '-inf', 'LIMIT', '0', '1')
    if #left > 0 then gone = tonumber(left[1]) end
    local total = c - gone
    if cost <= units and total + cost <= units then
      allowed, remaining, reset, retry = 1, units - total - cost, window, 0
      write = function()
        if gone - trimmed >= TRIM_UNITS then
          call('ZREMRANGEBYSCORE', log, '-inf', int(edge))
          trimmed = gone
        end
        call('ZADD', log, int(now), int(c + cost))
        -- Both keys live until 2 windows (plus the slack) after `r`, and `r` moves on once
        -- a window has passed: so they outlive every entry by a window at least, and the
        -- expiry is set once a window instead of twice a request.
        local now_ms = floor(now / 1000)
        if refreshed == nil or now_ms - refreshed > window / 1000 then
          local ttl = ttl_ms(2 * window)
          call('PEXPIRE', log, ttl)
          call('SET', count, format('%d %d %d', c + cost, trimmed, now_ms), 'PX', ttl)
        else
          call('SET', count, format('%d %d %d', c + cost, trimmed, refreshed), 'KEEPTTL')
        end
      end
    else
      if cost <= units then  -- walk the oldest live entries until enough units would leave
        local need = total + cost - units
        local live = call('ZRANGEBYSCORE', log, '(' .. int(edge), '+inf', 'WITHSCORES',
                          'LIMIT', '0', int(need))
        for i = 1, #live, 2 do
          if tonumber(live[i]) - gone >= need then
            retry = tonumber(live[i + 1]) + window - now
            break
          end
        end
      end
      local newest = call('ZRANGE', log, '-1', '-1', 'WITHSCORES')
      if #newest > 0 then reset = tonumber(newest[2]) + window - now end
      remaining = units - total
    end
    k = k + 2
  else
    -- Fixed window (4), aligned to the epoch: window n covers [n*window, (n+1)*window).
    local units = limit + burst
    local index = floor(now / window)
    reset = (index + 1) * window - now
    local state = call('HMGET', key, 'w', 'n')
    local used = 0
    local begun = tonumber(state[1]) == index
    if begun then used = tonumber(state[2]) end
    if cost <= units and used + cost <= units then
      allowed, remaining, retry = 1, units - used - cost, 0
      write = function()
        call('HSET', key, 'w', int(index), 'n', int(used + cost))
        -- Set by the window's first write: the end of the window plus the slack.
        if not begun then call('PEXPIRE', key, ttl_ms(reset)) end
      end
    else
      if cost <= units then retry = reset end
      remaining = units - used
    end
    k = k + 1
  end
  if allowed == 1 then
    writes[#writes + 1] = write
  elseif ARGV[b + 5] ~= "1" then
    admitted = false
  end
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if admitted then
  out[1] = 1
  if commit then
    for i = 1, #writes do writes[i]() end
  end
  if reserving then out[#out + 1] = now end
end
return out
