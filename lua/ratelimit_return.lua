-- Give back the units a reservation (lua/ratelimit.lua with ARGV[2] "2") took on one cluster
-- slot, because another slot of the same request refused it: the request consumes nothing.
--
-- KEYS: per returned rule, its keys as in the reservation (two for sliding_window).
-- ARGV[1]: the reservation's `now` (the last element of its reply), in microseconds.
-- then 4 per rule: algorithm (1-4 as in lua/ratelimit.lua), limit, window in microseconds,
--   cost.
-- Returns the number of rules whose units were given back (a rule whose state expired
-- meanwhile has nothing left to return).
local reserved = tonumber(ARGV[1])
local function fmt(x) return string.format('%.0f', x) end

-- GCRA: the reservation moved the theoretical arrival time on by cost emission intervals.
-- A time at or before the reservation's is an idle bucket, like no key at all. The TTL is
-- counted from the reservation (the script's own clock then), a round trip too long at most.
local function gcra(keys, limit, window, cost)
  local tat = tonumber(redis.call('GET', keys[1]))
  if not tat then return 0 end
  local back = tat - cost * math.ceil(window / limit)
  if back <= reserved then
    redis.call('DEL', keys[1])
  else
    redis.call('SET', keys[1], fmt(back), 'PX', math.ceil((back - reserved) / 1000) + 1000)
  end
  return 1
end

-- The log entry "seq:cost" at the reservation's instant; entries of equal time and cost are
-- interchangeable, so removing any one of them restores the log the request found.
local function sliding_window(keys, limit, window, cost)
  local entries = redis.call('ZRANGEBYSCORE', keys[1], fmt(reserved), fmt(reserved))
  for i = 1, #entries do
    if tonumber(string.match(entries[i], ':(%d+)$')) == cost then
      redis.call('ZREM', keys[1], entries[i])
      redis.call('HINCRBY', keys[2], 't', -cost)
      return 1
    end
  end
  return 0
end

local function fixed_window(keys, limit, window, cost)
  local state = redis.call('HMGET', keys[1], 'w', 'n')
  if tonumber(state[1]) ~= math.floor(reserved / window) then return 0 end
  redis.call('HSET', keys[1], 'n', fmt(math.max(0, tonumber(state[2]) - cost)))
  return 1
end

local ALGORITHMS = {{gcra, 1}, {gcra, 1}, {sliding_window, 2}, {fixed_window, 1}}

local returned = 0
local k = 1
for b = 2, #ARGV, 4 do
  local algorithm = ALGORITHMS[tonumber(ARGV[b])]
  returned = returned + algorithm[1]({KEYS[k], KEYS[k + 1]}, tonumber(ARGV[b + 1]),
                                     tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]))
  k = k + algorithm[2]
end
return returned
