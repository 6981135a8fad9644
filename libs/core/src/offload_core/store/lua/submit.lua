-- Accepting a job in one step, so it exists either wholly or not at all: its Celery message on
-- the queue's list, its record, its kept arguments, its place in the waiting set and its entries
-- in the listing indexes. The push goes first: Redis does not undo the writes before a failing
-- command, and only the push can fail on a key of another type.
-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] WAITING_KEY, KEYS[4] the queue's Redis list,
-- KEYS[5] INDEX_KEY, KEYS[6] the type's index, KEYS[7] the owner's index;
-- ARGV now, ttl, job id, kwargs (kombu JSON), message, then the record's field/value pairs.
local depth = redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[7], ARGV[1], ARGV[3])
return depth
