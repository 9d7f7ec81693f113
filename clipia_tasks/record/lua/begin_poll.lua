-- begin_poll: take the poll lock and stamp the call time, unless a call runs or is too recent.
-- KEYS[1] record hash   KEYS[2] poll lock clipia:lock:<id>
-- ARGV[1] lock token (host|pid|task|retries)   ARGV[2] lock_ms   ARGV[3] now
-- ARGV[4] min_gap_s (0 for a result fetch: only the lock is taken)
-- ARGV[5] unanswered_margin_s
-- The gap counts from when the last status call was answered (last_poll_at); a call that
-- was sent but never answered (its process died) counts from call_started_at + margin.
-- Returns {'ok', ''}, {'early', <earliest allowed call time>} or {'locked', <holder token>}.
local holder = redis.call('GET', KEYS[2])
if holder then return {'locked', holder} end
if tonumber(ARGV[4]) <= 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
  return {'ok', ''}
end
local sent = tonumber(redis.call('HGET', KEYS[1], 'call_started_at') or '0')
local answered = tonumber(redis.call('HGET', KEYS[1], 'last_poll_at') or '0')
local from = answered
if answered < sent then from = sent + tonumber(ARGV[5]) end
local earliest = from + tonumber(ARGV[4])
if tonumber(ARGV[3]) < earliest then return {'early', tostring(earliest)} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'call_started_at', ARGV[3])
return {'ok', ''}
