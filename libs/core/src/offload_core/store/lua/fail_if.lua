-- KEYS[1] job key; ARGV now, ttl, error, then the statuses the job may be in to be failed.
local status = redis.call('HGET', KEYS[1], 'status')
for i = 4, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[3], 'finished_at', ARGV[1], 'updated_at', ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return 1
  end
end
return 0
