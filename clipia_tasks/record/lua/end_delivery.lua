-- end_delivery: the receivers returned; mark the record delivered and free the lock.
-- KEYS[1] record hash   KEYS[2] delivery lock
-- ARGV[1] lock token
-- Writes delivered = 1 (only on a record that still exists); deletes the lock if it
-- still holds this token. Returns 1 if the record was marked.
local marked = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'delivered', '1')
  marked = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return marked
