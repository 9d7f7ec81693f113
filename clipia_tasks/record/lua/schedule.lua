-- schedule: the owner stores what it saw and when its chain's next message is due.
-- KEYS[1] record hash   KEYS[2] chains index   KEYS[3] poll lock clipia:lock:<id>
-- ARGV[1] task_id   ARGV[2] gen_next   ARGV[3] lease_until   ARGV[4] ttl_s
-- ARGV[5] wake_at (score in the chains index)   ARGV[6] request_id
-- ARGV[7] change channel (clipia:changes:<request_id>): PUBLISHed after the write
-- ARGV[8] poll lock token to release ('' = none): the call that led here is over, so
--   the lock goes in the same round trip (whatever the answer below)
-- ARGV[9..] field/value pairs to store (next_poll_at, status, progress, history, ...)
-- A terminal status already seen (e.g. from a webhook) is not overwritten by a pending one.
-- Returns 1, or 0 when this chain is no longer the owner or the outcome is recorded.
local k = KEYS[1]
if ARGV[8] ~= '' and redis.call('GET', KEYS[3]) == ARGV[8] then redis.call('DEL', KEYS[3]) end
if redis.call('HGET', k, 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', k, 'outcome') == 1 then return 0 end
local current = redis.call('HGET', k, 'status')
local terminal = {COMPLETED = true, FAILED = true, CANCELED = true}
redis.call('HSET', k, 'gen', ARGV[2], 'lease_until', ARGV[3])
for i = 9, #ARGV, 2 do
  if not (ARGV[i] == 'status' and terminal[current] and not terminal[ARGV[i + 1]]) then
    redis.call('HSET', k, ARGV[i], ARGV[i + 1])
  end
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[6] .. ' ' .. ARGV[1])
redis.call('EXPIRE', k, tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[7], 'changed')
return 1
