-- Store one variant of a URL in the URL's hash and keep the hash alive as long as its
-- longest-lived variant needs (plain EXPIRE would cut a longer-lived variant short).
-- KEYS[1]: the URL's hash   ARGV[1]: variant id   ARGV[2]: encoded entry
-- ARGV[3]: seconds to keep   ARGV[4]: most variants per URL
-- Returns 1 when stored, 0 when the URL already has ARGV[4] other variants.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local keep = tonumber(ARGV[3])
if redis.call('TTL', KEYS[1]) < keep then
  redis.call('EXPIRE', KEYS[1], keep)
end
return 1
