-- claim: every poll_request message starts here, learns its role, and (an owner whose
-- status call is due) takes the poll lock: one round trip before the API call.
-- KEYS[1] record hash clipia:request:<id>    KEYS[2] chains index clipia:index:chains
-- KEYS[3] poll lock clipia:lock:<id>   KEYS[4] the key's pause clipia:pause:<tag>
-- KEYS[5] the epoch clipia:epoch   KEYS[6] the model's learned durations
--   clipia:durations:<model> (read only; the prefix alone when the model is unknown)
-- ARGV[1] task_id   ARGV[2] retries (message number)   ARGV[3] now (unix s)
-- ARGV[4] first_enqueued_at   ARGV[5] timeout_s   ARGV[6] ttl_s   ARGV[7] lease_s
-- ARGV[8] request_id   ARGV[9] run_s (how long this message may take before it is overdue)
-- ARGV[10] layout version   ARGV[11] change channel (PUBLISHed when this claim creates the record)
-- ARGV[12] lock token ('' = never take the lock)   ARGV[13] lock_ms
-- ARGV[14] min_gap_s between status calls   ARGV[15] unanswered_margin_s
-- ARGV[16] webhook fallback delay s (a request expecting a webhook is not polled before it)
-- ARGV[17] result waits after which a reported end is checked with /status again
-- Reads: outcome, owner, gen, lease_until, w:<task_id>; for the gate: next_poll_at,
--   deadline_at, expects_webhook, terminal_seen, first_enqueued_at, call_started_at,
--   last_poll_at, the pause and the lock.
-- Writes: first_enqueued_at (unless registered), deadline_at and status SUBMITTED (the
--   first claim only), layout,
--   gen, w:<task_id>, owner, lease_until, fatal; ZADD chains; EXPIRE record; with the
--   gate open: the lock (SET PX) and call_started_at (as begin_poll does).
-- Returns {role, gate, gate_info, pause_until, epoch, durations, field, value, ...}
-- (the whole record).
-- role: 'done' | 'owner' | 'follower' | 'fetch' | 'stale'. 'fetch': a terminal status
-- was reported (terminal_seen, e.g. by a webhook) while another chain owns the request
-- and sleeps in its countdown: this message fetches the result now, owning nothing.
-- gate (owner only, else ''): 'ok' (lock taken: call now), 'wait' (next_poll_at ahead),
-- 'due' (deadline passed), 'webhook' (expecting a webhook, before the fallback delay),
-- 'paused' (the key is rate limited), 'early' (gap; info = earliest call time) or
-- 'locked' (info = holder token). The poller decides in the same order.
local k, chains = KEYS[1], KEYS[2]
local task_id, retries, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local enq, timeout, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local member = ARGV[8] .. ' ' .. task_id
local function answer(role, gate, info)
  local out = {role, gate, info, redis.call('GET', KEYS[4]) or '0',
               redis.call('GET', KEYS[5]) or '', redis.call('GET', KEYS[6]) or ''}
  local fields = redis.call('HGETALL', k)
  for i = 1, #fields do out[#out + 1] = fields[i] end
  return out
end
if redis.call('HEXISTS', k, 'outcome') == 1 then return answer('done', '', '') end
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
  if retries < gen then return answer('stale', '', '') end
  redis.call('HSET', k, 'gen', tostring(retries))
  role = 'owner'
else
  local lease = tonumber(redis.call('HGET', k, 'lease_until') or '0')
  local seen = tonumber(redis.call('HGET', k, 'w:' .. task_id) or '-1')
  if retries < seen then return answer('stale', '', '') end
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
if role ~= 'owner' or ARGV[12] == '' then return answer(role, '', '') end

-- The gate, in the order the poller decides (it re-checks with the record returned).
local function num(field)
  local v = redis.call('HGET', k, field)
  if v == false or v == '' then return nil end
  return tonumber(v)
end
local next_at = num('next_poll_at')
if next_at and now < next_at - 0.05 then return answer(role, 'wait', '') end
local deadline = num('deadline_at')
if deadline and now >= deadline then return answer(role, 'due', '') end
local seen = redis.call('HGET', k, 'terminal_seen') or ''
local status = redis.call('HGET', k, 'status') or ''
if status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELED' then
  seen = status  -- layout 0 kept a reported terminal status in 'status'
end
if redis.call('HGET', k, 'expects_webhook') == '1' and seen == '' then
  local since = num('first_enqueued_at') or now
  if now < since + tonumber(ARGV[16]) - 0.05 then return answer(role, 'webhook', '') end
end
local pause = tonumber(redis.call('GET', KEYS[4]) or '0')
if pause > now then return answer(role, 'paused', '') end
local holder = redis.call('GET', KEYS[3])
if holder then return answer(role, 'locked', holder) end
local fetch_only = seen ~= '' and (num('result_waits') or 0) < tonumber(ARGV[17])
if not fetch_only then
  -- A status call: keep the gap from the last answered one (see begin_poll.lua).
  local sent = num('call_started_at') or 0
  local answered = num('last_poll_at') or 0
  local from = answered
  if answered < sent then from = sent + tonumber(ARGV[15]) end
  local earliest = from + tonumber(ARGV[14])
  if now < earliest then return answer(role, 'early', tostring(earliest)) end
  redis.call('HSET', k, 'call_started_at', ARGV[3])
end
redis.call('SET', KEYS[3], ARGV[12], 'PX', tonumber(ARGV[13]))
return answer(role, 'ok', '')
