-- claim: every poll_request message starts here and learns its role.
-- KEYS[1] record hash clipia:request:<id>    KEYS[2] chains index clipia:index:chains
-- ARGV[1] task_id   ARGV[2] retries (message number)   ARGV[3] now (unix s)
-- ARGV[4] first_enqueued_at   ARGV[5] timeout_s   ARGV[6] ttl_s   ARGV[7] lease_s
-- ARGV[8] request_id   ARGV[9] run_s (how long this message may take before it is overdue)
-- ARGV[10] layout version   ARGV[11] change channel (PUBLISHed when this claim creates the record)
-- Reads: outcome, owner, gen, lease_until, w:<task_id>.
-- Writes: first_enqueued_at (unless registered), deadline_at and status SUBMITTED (the
--   first claim only), layout,
--   gen, w:<task_id>, owner, lease_until, fatal; ZADD chains; EXPIRE record.
-- Returns 'done' | 'owner' | 'follower' | 'fetch' | 'stale'. 'fetch': a terminal status
-- was reported (terminal_seen, e.g. by a webhook) while another chain owns the request
-- and sleeps in its countdown: this message fetches the result now, owning nothing.
local k, chains = KEYS[1], KEYS[2]
local task_id, retries, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local enq, timeout, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local member = ARGV[8] .. ' ' .. task_id
if redis.call('HEXISTS', k, 'outcome') == 1 then return 'done' end
redis.call('HSETNX', k, 'first_enqueued_at', ARGV[4])
if redis.call('HEXISTS', k, 'deadline_at') == 0 then
  -- The first claim fixes the deadline (first_enqueued_at may come from register).
  enq = tonumber(redis.call('HGET', k, 'first_enqueued_at'))
  redis.call('HSET', k, 'deadline_at', tostring(enq + timeout))
  if redis.call('HSETNX', k, 'status', 'SUBMITTED') == 1 then
    redis.call('PUBLISH', ARGV[11], 'created')
  end
end
redis.call('HSET', k, 'layout', ARGV[10])
local owner = redis.call('HGET', k, 'owner')
local role
if owner == task_id then
  local gen = tonumber(redis.call('HGET', k, 'gen') or '0')
  if retries < gen then return 'stale' end
  redis.call('HSET', k, 'gen', tostring(retries))
  role = 'owner'
else
  local lease = tonumber(redis.call('HGET', k, 'lease_until') or '0')
  local seen = tonumber(redis.call('HGET', k, 'w:' .. task_id) or '-1')
  if retries < seen then return 'stale' end
  redis.call('HSET', k, 'w:' .. task_id, tostring(retries))
  if owner and owner ~= '' and now < lease then
    role = 'follower'
    local reported = redis.call('HGET', k, 'terminal_seen') or ''
    local status = redis.call('HGET', k, 'status')
    if status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELED' then
      reported = status  -- layout 0 kept a reported terminal status in 'status'
    end
    if reported ~= '' then role = 'fetch' end
  else
    redis.call('HSET', k, 'owner', task_id, 'gen', tostring(retries),
               'lease_until', tostring(now + tonumber(ARGV[7])), 'fatal', '')
    role = 'owner'
  end
end
redis.call('ZADD', chains, now + tonumber(ARGV[9]), member)
redis.call('EXPIRE', k, ttl)
return role
