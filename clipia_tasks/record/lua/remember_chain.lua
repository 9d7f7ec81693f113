-- remember_chain: what the sweep needs to re-send a chain faithfully.
-- KEYS[1] record hash
-- ARGV[1] ttl_s   ARGV[2..] field/value pairs (cbu:<task_id>, lnk:<task_id>)
-- Written before the chain's first claim, so the record gets its TTL here too.
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
