-- pause: hold off every poller of one API key after a 429; never shortens a pause.
-- KEYS[1] clipia:pause:<key tag>
-- ARGV[1] until (unix s)   ARGV[2] ttl_ms
-- Returns 1 if the pause was set or extended, 0 if a longer one was already set.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
