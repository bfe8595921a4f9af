-- Give back the units a reservation (lua/ratelimit.lua with ARGV[2] "2") took on one cluster
-- slot, because another slot of the same request refused it: the request consumes nothing.
--
-- KEYS: per returned rule, its key as in the reservation.
-- ARGV[1]: the reservation's `now` (the last element of its reply), in microseconds.
-- then 4 per rule: algorithm (1-4 as in lua/ratelimit.lua), limit, window in microseconds,
--   cost.
-- Returns the number of rules whose units were given back (a rule whose state expired
-- meanwhile has nothing left to return).
local reserved = tonumber(ARGV[1])
local call, ceil, format = redis.call, math.ceil, string.format
local pack, unpack = struct.pack, struct.unpack
local ENTRY = 16  -- bytes of a sliding window's log entry, as in lua/ratelimit.lua
local function int(x) return format('%d', x) end

local returned = 0
for r = 1, #KEYS do
  local b = 2 + (r - 1) * 4
  local algorithm = tonumber(ARGV[b])
  local limit, window = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local cost = tonumber(ARGV[b + 3])
  local key = KEYS[r]
  if algorithm <= 2 then
    -- GCRA: the reservation moved the theoretical arrival time on by cost emission
    -- intervals. A time at or before the reservation's is an idle bucket, like no key at
    -- all. An earlier time needs no later expiry: the key keeps its own.
    local state = call('GET', key)
    if state then
      local tat, expires = unpack('<dd', state)
      local back = tat - cost * ceil(window / limit)
      if back <= reserved then
        call('DEL', key)
      else
        call('SET', key, pack('<dd', back, expires), 'KEEPTTL')
      end
      returned = returned + 1
    end
  elseif algorithm == 3 then
    -- Sliding window (the log and header of lua/ratelimit.lua): the reservation's entry is
    -- one of the reservation's instant and cost; entries of equal instant and cost are
    -- interchangeable, so giving back any one of them restores what the request found. It
    -- stays in the log but counts nothing: its running total and every later one drop by
    -- `cost`, and so does the header's. Later entries are those at or after the
    -- reservation's instant (Redis's clock, which the window already assumes does not step
    -- back): one round trip's admissions. An entry known to have left the window had
    -- nothing left to give back.
    local state = call('GETRANGE', key, '-56', '-1')
    if state ~= '' then
      local c, g, live, count, oldest, newest, refreshed = unpack('<ddddddd', state)
      local first = count - live
      local times, totals = {}, {}
      local lo = count
      -- Read back from the end until an entry older than the reservation.
      while lo > first do
        local from = lo - 16
        if from < first then from = first end
        local chunk = call('GETRANGE', key, int(from * ENTRY), int(lo * ENTRY - 1))
        for i = from, lo - 1 do
          times[i], totals[i] = unpack('<dd', chunk, (i - from) * ENTRY + 1)
        end
        lo = from
        if times[lo] < reserved then break end
      end
      local previous, ours = g, nil
      for i = lo, count - 1 do
        if times[i] > reserved then break end
        if times[i] == reserved and totals[i] - previous == cost then
          ours = i
          break
        end
        previous = totals[i]
      end
      if ours then
        -- The newest entry that still counts units, for a refusal's reset.
        newest = 0
        for i = count - 1, first, -1 do
          if i ~= ours then
            if totals[i] == nil then
              times[i], totals[i] = unpack('<dd', call('GETRANGE', key, int(i * ENTRY),
                                                      int(i * ENTRY + 15)))
            end
            local before = g
            if i > first then
              if totals[i - 1] == nil then
                times[i - 1], totals[i - 1] = unpack('<dd', call(
                  'GETRANGE', key, int((i - 1) * ENTRY), int(i * ENTRY - 1)))
              end
              before = totals[i - 1]
            end
            if totals[i] - before > 0 then
              newest = times[i]
              break
            end
          end
        end
        local parts = {}
        for i = ours, count - 1 do
          parts[#parts + 1] = pack('<dd', times[i], totals[i] - cost)
        end
        parts[#parts + 1] = pack('<ddddddd', c - cost, g, live, count, oldest, newest,
                                 refreshed)
        call('SETRANGE', key, int(ours * ENTRY), table.concat(parts))
        returned = returned + 1
      end
    end
  else
    -- Fixed window: the units counted in the reservation's window, if it is still the
    -- current one.
    local state = call('GET', key)
    if state then
      local index, used = unpack('<dd', state)
      if index == math.floor(reserved / window) then
        call('SET', key, pack('<dd', index, math.max(0, used - cost)), 'KEEPTTL')
        returned = returned + 1
      end
    end
  end
end
return returned
