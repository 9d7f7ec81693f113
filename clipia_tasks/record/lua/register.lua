-- register: a chain is about to be published; make it known to the sweep first.
-- KEYS[1] record hash   KEYS[2] chains index
-- ARGV[1] task_id   ARGV[2] request_id   ARGV[3] first_enqueued_at   ARGV[4] ttl_s
-- ARGV[5] due_at (when the chain's first message should run)   ARGV[6] layout version
-- ARGV[7] change channel (clipia:changes:<request_id>): PUBLISHed when the record is created
-- Writes (for a request Redis does not know yet): first_enqueued_at, status = SUBMITTED;
-- always: layout, ZADD chains, EXPIRE record. The deadline is left to the first claim,
-- so the worker's CLIPIA_POLL_TIMEOUT decides it.
-- A message that never arrives is re-sent by the sweep once due_at is far past.
-- Returns 'new' (the record was created), 'known' or 'done' (an outcome is recorded).
local k = KEYS[1]
local answer = 'known'
if redis.call('HEXISTS', k, 'outcome') == 1 then
  answer = 'done'
elseif redis.call('HSETNX', k, 'first_enqueued_at', ARGV[3]) == 1 then
  redis.call('HSETNX', k, 'status', 'SUBMITTED')
  answer = 'new'
  redis.call('PUBLISH', ARGV[7], 'created')
end
redis.call('HSET', k, 'layout', ARGV[6])
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[2] .. ' ' .. ARGV[1])
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return answer
