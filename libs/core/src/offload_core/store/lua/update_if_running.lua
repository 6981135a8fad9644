-- KEYS[1] job key; ARGV now, ttl, then field/value pairs. Writes only while the job is
-- running, so a late progress update cannot revive a job that ended or was cancelled.
if redis.call('HGET', KEYS[1], 'status') ~= 'started' then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
