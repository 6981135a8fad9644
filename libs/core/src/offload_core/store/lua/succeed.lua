-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY; ARGV now, ttl, result, job id, key
-- prefix. A chain step's successor is published by the worker once this step succeeded: only
-- from then on is it waiting for a worker, so it joins the waiting set now (if still queued).
redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[1], 'updated_at', ARGV[1],
           'result', ARGV[3], 'progress', 100)
redis.call('HDEL', KEYS[1], 'error')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[2])
local next_step = redis.call('HGET', KEYS[1], 'next_step')
if next_step and redis.call('HGET', ARGV[5] .. next_step, 'status') == 'queued' then
  redis.call('ZADD', KEYS[3], ARGV[1], next_step)
end
return 1
