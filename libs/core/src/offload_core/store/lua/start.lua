-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY; ARGV now, ttl, task, queue, key prefix,
-- worker, job id. Creates the record if a message arrived without one (sent by another client, or its
-- record expired). A worker holds the message now: if it dies, kombu restores it from its unacked
-- hash, so the job leaves the waiting set and its kept arguments go.
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[2])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' then return 'cancelled' end
if status == 'succeeded' or status == 'failed' then return 'finished' end
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
