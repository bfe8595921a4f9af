-- Index a URL's hash under a purge tag; the index lives as long as its longest member.
-- KEYS[1]: the tag's set   ARGV[1]: the URL hash's key name   ARGV[2]: seconds to keep
redis.call('SADD', KEYS[1], ARGV[1])
local keep = tonumber(ARGV[2])
if redis.call('TTL', KEYS[1]) < keep then
  redis.call('EXPIRE', KEYS[1], keep)
end
return 1
