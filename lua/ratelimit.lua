-- Decide every rate-limit rule of one request atomically (issue 3).
-- The in-process store (gateway/ratelimit/algorithms.py) implements the same arithmetic
-- step for step; tests/integration/test_ratelimit_stores.py proves they agree.
--
-- KEYS: per rule in order: one key, or two (log, sum) for sliding_window.
-- ARGV[1]: "" to read the clock with Redis TIME, or a time in microseconds (tests only).
-- ARGV[2]: "1" commit when admitted, "0" only look (the admin state call), "2" commit and
--   append the script's `now` to an admitting reply (a reservation that may be returned by
--   lua/ratelimit_return.lua: one part of a request decided on several cluster slots).
-- then 6 per rule: algorithm (1 token_bucket, 2 leaky_bucket, 3 sliding_window,
--   4 fixed_window), limit, burst, window in microseconds, cost, soft (1: a shadow or degrade
--   rule, reported but never blocking the others).
-- Returns {admitted, then per rule: allowed, remaining, reset_us, retry_us (-1: never)}.
-- Every number is an integer held in a double (exact below 2^53), so the two stores agree
-- to the microsecond. Redis 6.2+ (EVAL/EVALSHA only).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local commit = ARGV[2] ~= "0"
local SLACK_MS = 1000  -- a key outlives the moment it stops mattering by this much

local function fmt(x) return string.format('%.0f', x) end
local function ttl_ms(us) return math.ceil(us / 1000) + SLACK_MS end
local function entry_cost(member) return tonumber(string.match(member, ':(%d+)$')) end

-- GCRA with a capacity of `units`: token_bucket has units = limit + burst, leaky_bucket
-- units = burst + 1. The stored value is the theoretical arrival time (TAT): the instant the
-- bucket is full again. The emission interval is rounded up to a whole microsecond.
local function gcra(keys, units, limit, window, cost)
  local key = keys[1]
  local interval = math.ceil(window / limit)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local capacity = units * interval
  local new_tat = tat + cost * interval
  local diff = new_tat - now
  if cost <= units and diff <= capacity then
    return 1, math.floor((capacity - diff) / interval), diff, 0, function()
      redis.call('SET', key, fmt(new_tat), 'PX', ttl_ms(diff))
    end
  end
  local retry = -1
  if cost <= units then retry = diff - capacity end
  return 0, math.floor((capacity - (tat - now)) / interval), tat - now, retry, nil
end

local function token_bucket(keys, limit, burst, window, cost)
  return gcra(keys, limit + burst, limit, window, cost)
end

local function leaky_bucket(keys, limit, burst, window, cost)
  return gcra(keys, burst + 1, limit, window, cost)
end

-- Exact log: one sorted-set entry "seq:cost" scored by its time per admitted request, and a
-- hash with the running total `t` of live costs and the sequence `q`. An entry counts while
-- its score is > now - window.
local function sliding_window(keys, limit, burst, window, cost)
  local log, sum = keys[1], keys[2]
  local units = limit + burst
  local edge = now - window
  local total = tonumber(redis.call('HGET', sum, 't')) or 0
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', fmt(edge))
  if #expired > 0 then  -- forgetting the past changes no decision, so even a look may trim
    for i = 1, #expired do total = total - entry_cost(expired[i]) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', fmt(edge))
    if total > 0 then redis.call('HSET', sum, 't', fmt(total)) else redis.call('DEL', sum) end
  end
  if cost <= units and total + cost <= units then
    return 1, units - total - cost, window, 0, function()
      local seq = redis.call('HINCRBY', sum, 'q', 1)
      redis.call('ZADD', log, fmt(now), seq .. ':' .. cost)
      redis.call('HSET', sum, 't', fmt(total + cost))
      redis.call('PEXPIRE', log, ttl_ms(window))
      redis.call('PEXPIRE', sum, ttl_ms(window))
    end
  end
  local retry = -1
  if cost <= units then  -- walk the oldest entries until enough units would have left
    local need = total + cost - units
    local live = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(edge), '+inf', 'WITHSCORES',
                            'LIMIT', 0, need)
    local freed = 0
    for i = 1, #live, 2 do
      freed = freed + entry_cost(live[i])
      if freed >= need then retry = tonumber(live[i + 1]) + window - now; break end
    end
  end
  local reset = 0
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if #newest > 0 then reset = tonumber(newest[2]) + window - now end
  return 0, units - total, reset, retry, nil
end

-- Windows aligned to the epoch: window n covers [n*window, (n+1)*window).
local function fixed_window(keys, limit, burst, window, cost)
  local key = keys[1]
  local units = limit + burst
  local index = math.floor(now / window)
  local reset = (index + 1) * window - now
  local state = redis.call('HMGET', key, 'w', 'n')
  local used = 0
  if tonumber(state[1]) == index then used = tonumber(state[2]) end
  if cost <= units and used + cost <= units then
    return 1, units - used - cost, reset, 0, function()
      redis.call('HSET', key, 'w', fmt(index), 'n', fmt(used + cost))
      redis.call('PEXPIRE', key, ttl_ms(reset))
    end
  end
  local retry = -1
  if cost <= units then retry = reset end
  return 0, units - used, reset, retry, nil
end

local ALGORITHMS = {
  {token_bucket, 1}, {leaky_bucket, 1}, {sliding_window, 2}, {fixed_window, 1},
}

local out = {0}
local writes = {}
local admitted = true
local k = 1
for b = 3, #ARGV, 6 do
  local algorithm = ALGORITHMS[tonumber(ARGV[b])]
  local nkeys = algorithm[2]
  local keys = {KEYS[k], KEYS[k + 1]}
  k = k + nkeys
  local allowed, remaining, reset, retry, write = algorithm[1](
    keys, tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
    tonumber(ARGV[b + 4]))
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
  if ARGV[2] == "2" then out[#out + 1] = now end
end
return out
