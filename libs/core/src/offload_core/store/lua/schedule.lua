-- Accepting a delayed job in one step: its record (status `scheduled`), its kept arguments, its
-- rendered Celery message and target list beside it, its place in the scheduled set (scored by
-- its due time) and its entries in the listing indexes. PROMOTE publishes the message when due.
-- KEYS[1] job key, KEYS[2] its kwargs key, KEYS[3] its message key, KEYS[4] SCHEDULED_KEY,
-- KEYS[5] INDEX_KEY, KEYS[6] the type's index, KEYS[7] the owner's index;
-- ARGV now, ttl (until due, plus the record's TTL), job id, kwargs (kombu JSON), message,
-- the queue's Redis list, due time, then the record's field/value pairs.
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
redis.call('HSET', KEYS[3], 'list', ARGV[6], 'message', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[7], ARGV[1], ARGV[3])
return 1
