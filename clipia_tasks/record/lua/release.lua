-- release: the owner gives up after a final API error (401/403/404), recording it.
-- KEYS[1] record hash
-- ARGV[1] task_id   ARGV[2] ttl_s   ARGV[3..] field/value pairs (fatal)
-- Returns 1, or 0 when this chain is not the owner.
local k = KEYS[1]
if redis.call('HGET', k, 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', k, 'owner', '', 'lease_until', '0')
for i = 3, #ARGV, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', k, tonumber(ARGV[2]))
return 1
