-- Accepting a job in one step, so it exists either wholly or not at all: its record, its kept
-- arguments, its place in the waiting set, its entries in the listing indexes and its Celery
-- message on the queue's list.
-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY, KEYS[4] the queue's Redis list,
-- KEYS[5] INDEX_KEY, KEYS[6] the type's index; ARGV now, ttl, job id, kwargs (kombu JSON),
-- message, then the record's field/value pairs.
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[1], ARGV[3])
return redis.call('LPUSH', KEYS[4], ARGV[5])
