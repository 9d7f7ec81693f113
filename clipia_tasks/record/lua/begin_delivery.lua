-- begin_delivery: may this process fire the completion signals now?
-- KEYS[1] record hash   KEYS[2] delivery lock clipia:delivering:<id>
-- ARGV[1] lock token   ARGV[2] lock_ms
-- Returns {'skip', ''} (no outcome yet, or delivered = 1), {'go', ''} (lock taken)
-- or {'busy', <holder token>}.
if redis.call('HEXISTS', KEYS[1], 'outcome') == 0 then return {'skip', ''} end
if redis.call('HGET', KEYS[1], 'delivered') == '1' then return {'skip', ''} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'busy', holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
return {'go', ''}
