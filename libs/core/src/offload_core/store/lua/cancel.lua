-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY; ARGV now, ttl, job id.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' or status == 'retrying' then
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[2])
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
