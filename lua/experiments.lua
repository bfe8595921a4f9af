-- Apply one batch of an experiment's records atomically. The in-process store
-- (gateway/experiments/store.py, LocalExperimentStore) does the same step for step;
-- tests/integration/test_experiment_stores.py runs one suite against both.
--
-- KEYS[1] units: HASH unit -> variant of its first exposure
-- KEYS[2] counts: HASH variant -> exposed units; "unexposed|<metric>" -> events of no unit
-- KEYS[3] aggregates: HASH "<metric>|<variant>|c" units with an event, "|s" sum of per-unit
--         sums, "|q" sum of their squares; "g|<variant>|n|e|ls|lq|h<i>" the guardrails
-- KEYS[4..3+M] per metric, in ARGV's order: HASH unit -> the unit's sum of values
-- KEYS[4+M..] one per event that carries an id: its idempotency key
-- ARGV[1] JSON list of records:
--   {"x", variant, {unit...}}                 exposures of units to a variant
--   {"e", metric index (1-based), unit, value, event key index (0: none), metric name}
--   {"g", variant, requests, errors, latency sum, latency square sum,
--    {{bucket, count}...} of the latency histogram's buckets that were hit}
-- ARGV[2] how long an event id is remembered, in seconds
-- ARGV[3] M, the number of metric keys
-- Returns {new units, events counted, duplicate events, events of unexposed units}.
local records = cjson.decode(ARGV[1])
local keep = tonumber(ARGV[2])
local new_units, counted, duplicates, unexposed = 0, 0, 0, 0
local metric_keys = tonumber(ARGV[3])
for _, r in ipairs(records) do
  local kind = r[1]
  if kind == "x" then
    local fresh = 0
    for _, unit in ipairs(r[3]) do
      fresh = fresh + redis.call('HSETNX', KEYS[1], unit, r[2])
    end
    if fresh > 0 then
      redis.call('HINCRBY', KEYS[2], r[2], fresh)
      new_units = new_units + fresh
    end
  elseif kind == "e" then
    local fresh = true
    if r[5] > 0 then
      fresh = redis.call('SET', KEYS[3 + metric_keys + r[5]], '1', 'NX', 'EX', keep) ~= false
    end
    if not fresh then
      duplicates = duplicates + 1
    else
      local variant = redis.call('HGET', KEYS[1], r[3])
      local metric = KEYS[3 + r[2]]
      local name = r[6]
      if not variant then
        redis.call('HINCRBY', KEYS[2], 'unexposed|' .. name, 1)
        unexposed = unexposed + 1
      else
        local old = tonumber(redis.call('HGET', metric, r[3]) or '')
        local new = tonumber(redis.call('HINCRBYFLOAT', metric, r[3], r[4]))
        local prefix = name .. '|' .. variant .. '|'
        if old == nil then
          old = 0
          redis.call('HINCRBY', KEYS[3], prefix .. 'c', 1)
        end
        redis.call('HINCRBYFLOAT', KEYS[3], prefix .. 's', r[4])
        redis.call('HINCRBYFLOAT', KEYS[3], prefix .. 'q', new * new - old * old)
        counted = counted + 1
      end
    end
  elseif kind == "g" then
    local prefix = 'g|' .. r[2] .. '|'
    redis.call('HINCRBY', KEYS[3], prefix .. 'n', r[3])
    redis.call('HINCRBY', KEYS[3], prefix .. 'e', r[4])
    redis.call('HINCRBYFLOAT', KEYS[3], prefix .. 'ls', r[5])
    redis.call('HINCRBYFLOAT', KEYS[3], prefix .. 'lq', r[6])
    for _, pair in ipairs(r[7]) do
      redis.call('HINCRBY', KEYS[3], prefix .. 'h' .. pair[1], pair[2])
    end
  end
end
return {new_units, counted, duplicates, unexposed}
