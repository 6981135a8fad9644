-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY, KEYS[4] SCHEDULED_KEY,
-- KEYS[5] its message key (a delayed job's); ARGV now, ttl, job id.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' or status == 'retrying' or status == 'scheduled' then
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[5])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1],
             'error', 'cancelled before it ran')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 'cancelled'
end
if status == 'started' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 1, 'updated_at', ARGV[1])
  return 'requested'
end
return 'finished'
