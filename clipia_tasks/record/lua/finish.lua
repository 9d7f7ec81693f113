-- finish: record the terminal outcome; the first writer wins.
-- KEYS[1] record hash
-- ARGV[1] ttl_s   ARGV[2] change channel (clipia:changes:<request_id>)
-- ARGV[3..] field/value pairs (outcome, status, result, error, finished_at, ...)
-- Writes the pairs, then owner = '' and lease_until = 0; PUBLISHes on the channel.
-- Returns 1 for the first writer, 0 when an outcome was already recorded.
local k = KEYS[1]
if redis.call('HEXISTS', k, 'outcome') == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', k, 'owner', '', 'lease_until', '0')
redis.call('EXPIRE', k, tonumber(ARGV[1]))
redis.call('PUBLISH', ARGV[2], 'finished')
return 1
