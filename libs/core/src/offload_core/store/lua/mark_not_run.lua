-- KEYS job keys of the steps that will not run; ARGV now, ttl, error. Only a step still queued is
-- marked: one that started (a redelivery) or ended keeps its own record.
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'status', 'cancelled', 'error', ARGV[3], 'finished_at', ARGV[1], 'updated_at', ARGV[1])
    redis.call('EXPIRE', key, ARGV[2])
  end
end
return 1
