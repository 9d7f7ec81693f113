-- unlock: delete a lock only if it still holds this token.
-- KEYS[1] a lock (clipia:lock:<id> or clipia:delivering:<id>)   ARGV[1] token
-- Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
