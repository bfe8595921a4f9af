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
local call, ceil, format = redis.call, math.ceil, string.format
local SLACK_MS = 1000  -- as in lua/ratelimit.lua
local function int(x) return format('%d', x) end

local returned = 0
local k = 1
for b = 2, #ARGV, 4 do
  local algorithm = tonumber(ARGV[b])
  local limit, window = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local cost = tonumber(ARGV[b + 3])
  local key = KEYS[k]
  if algorithm <= 2 then
    -- GCRA: the reservation moved the theoretical arrival time on by cost emission
    -- intervals. A time at or before the reservation's is an idle bucket, like no key at
    -- all. The expiry is counted from the reservation (the script's clock then), a round
    -- trip too long at most.
    local tat = tonumber(call('GET', key))
    if tat then
      local back = tat - cost * ceil(window / limit)
      if back <= reserved then
        call('DEL', key)
      else
        call('SET', key, int(back), 'PX', int(ceil((back - reserved) / 1000) + SLACK_MS))
      end
      returned = returned + 1
    end
    k = k + 1
  elseif algorithm == 3 then
    -- Sliding window: each log entry is named by the running total of units up to and
    -- including it, so an entry's cost is its name minus the name before it (the first
    -- one's: the count's total of trimmed entries). The reservation's entry is one of the
    -- reservation's instant and cost; entries of equal instant and cost are
    -- interchangeable, so giving back any one of them restores what the request found.
    -- Every total stays consistent: the entry goes, each later entry's name and the count's
    -- running total drop by `cost`. Later entries are those at or after the reservation's
    -- instant (Redis's clock, which the window already assumes does not step back): one
    -- round trip's admissions. An entry trimmed or expired meanwhile had left the window:
    -- nothing to give back.
    local log, count = key, KEYS[k + 1]
    local state = call('GET', count)
    if state then
      local c, t, r = string.match(state, '^(%d+) (%d+) (%d+)$')
      local found = call('ZRANGEBYSCORE', log, int(reserved), '+inf', 'WITHSCORES')
      local later = {}
      for i = 1, #found, 2 do later[#later + 1] = {tonumber(found[i]), found[i + 1]} end
      -- By name: entries of one instant come in the text order of their names ("10"
      -- before "9"), and renaming lowest first never meets a name not yet renamed.
      table.sort(later, function(x, y) return x[1] < y[1] end)
      local before = call('ZREVRANGEBYSCORE', log, '(' .. int(reserved), '-inf', 'LIMIT', '0', '1')
      local previous = tonumber(before[1] or t)
      local ours = nil
      for i = 1, #later do
        if tonumber(later[i][2]) ~= reserved then break end
        if later[i][1] - previous == cost then
          ours = i
          break
        end
        previous = later[i][1]
      end
      if ours then
        call('ZREM', log, int(later[ours][1]))
        for i = ours + 1, #later do
          call('ZREM', log, int(later[i][1]))
          call('ZADD', log, later[i][2], int(later[i][1] - cost))
        end
        call('SET', count, format('%d %s %s', tonumber(c) - cost, t, r), 'KEEPTTL')
        returned = returned + 1
      end
    end
    k = k + 2
  else
    -- Fixed window: the units counted in the reservation's window, if it is still the
    -- current one.
    local state = call('HMGET', key, 'w', 'n')
    if tonumber(state[1]) == math.floor(reserved / window) then
      call('HSET', key, 'n', int(math.max(0, tonumber(state[2]) - cost)))
      returned = returned + 1
    end
    k = k + 1
  end
end
return returned
