-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY; ARGV now, ttl, task, queue, key prefix,
-- worker, job id, most lost runs. Creates the record if a message arrived without one (sent by another
-- client, or its record expired). A worker holds the message now: if it dies, kombu restores it from
-- its unacked hash, so the job leaves the waiting set and its kept arguments go. A job still
-- 'started' was delivered again without its last run recording an outcome: that run was lost
-- (worker process killed or crashed); past the most lost runs it is 'poisoned' and must not run.
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[2])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' or status == 'succeeded' then
  -- Skipped, but Celery goes on with a chain: the next step is published now and waits.
  local next_step = redis.call('HGET', KEYS[1], 'next_step')
  if next_step and redis.call('HGET', ARGV[5] .. next_step, 'status') == 'queued' then
    redis.call('ZADD', KEYS[3], 'NX', ARGV[1], next_step)
  end
end
if status == 'cancelled' then return 'cancelled' end
if status == 'succeeded' or status == 'failed' then return 'finished' end
if status == 'started' and redis.call('HINCRBY', KEYS[1], 'lost_runs', 1) >= tonumber(ARGV[8]) then
  return 'poisoned'
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  -- asked to stop during an earlier attempt: do not start another one
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
  return 'cancelled'
end
if not status then
  redis.call('HSET', KEYS[1], 'id', string.sub(KEYS[1], #ARGV[5] + 1), 'task', ARGV[3],
             'queue', ARGV[4], 'created_at', ARGV[1], 'progress', 0, 'attempts', 0)
end
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', 'started', 'updated_at', ARGV[1], 'worker', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'run'
