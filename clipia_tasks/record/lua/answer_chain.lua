-- answer_chain: a chain has answered its caller (SUCCESS or FAILURE stored).
-- KEYS[1] record hash   KEYS[2] chains index
-- ARGV[1] task_id   ARGV[2] chains member "<request_id> <task_id>"
-- Writes ans:<task_id> = 1 on a record that still exists (a restored copy of the chain's
-- message then exits without answering twice); removes the chain from the index.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'ans:' .. ARGV[1], '1')
end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
