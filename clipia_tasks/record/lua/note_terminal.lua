-- note_terminal: a verified webhook says the request ended.
-- KEYS[1] record hash
-- ARGV[1] terminal status   ARGV[2] now   ARGV[3] webhook delivery id   ARGV[4] ttl_s
-- ARGV[5] timeout_s   ARGV[6] request_id   ARGV[7] layout version
-- Writes terminal_seen (status turns terminal only with the outcome, in finish),
-- webhook_id, webhook_at, next_poll_at = now (fetch the result at once), layout, and
-- first_enqueued_at / deadline_at / status SUBMITTED for a request nobody polled yet.
-- Returns 'done' (outcome recorded), 'seen' (a webhook was noted before) or 'new'.
local k = KEYS[1]
if redis.call('HEXISTS', k, 'outcome') == 1 then return 'done' end
if redis.call('HGET', k, 'webhook_id') then return 'seen' end
if redis.call('HSETNX', k, 'first_enqueued_at', ARGV[2]) == 1 then
  redis.call('HSET', k, 'deadline_at', tostring(tonumber(ARGV[2]) + tonumber(ARGV[5])))
  redis.call('HSETNX', k, 'status', 'SUBMITTED')
end
redis.call('HSET', k, 'terminal_seen', ARGV[1], 'webhook_id', ARGV[3], 'webhook_at', ARGV[2],
           'next_poll_at', ARGV[2], 'layout', ARGV[7])
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return 'new'
