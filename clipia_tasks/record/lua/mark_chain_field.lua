-- mark_chain_field: set one per-chain flag on a record that still exists.
-- KEYS[1] record hash
-- ARGV[1] field (ans:<task_id> or cb:<task_id>)   ARGV[2] value
-- A record that expired is not re-created (it would have no TTL and no fields to read).
-- Returns 1 if written, 0 if the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
