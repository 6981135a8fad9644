-- One tick of a recurring schedule, exactly once: the tick the caller read must still be the
-- schedule's next fire time (not paused, not deleted, not fired by another loop meanwhile); then
-- the next fire time moves on and, unless the tick is skipped, the tick's job is accepted as
-- SUBMIT accepts one (its message on the queue's list, its record, arguments, waiting-set and
-- index entries), all in this one step. The job id is derived from (schedule, tick).
-- KEYS[1] schedule key, KEYS[2] SCHEDULES_DUE_KEY, KEYS[3] job key, KEYS[4] its kwargs key,
-- KEYS[5] WAITING_KEY, KEYS[6] the queue's Redis list, KEYS[7] INDEX_KEY, KEYS[8] the type's
-- index, KEYS[9] the owner's index;
-- ARGV schedule id, the tick read (as stored), the next fire time, now, job TTL, job id ('' to
-- skip the tick), kwargs (kombu JSON), message, then the job record's field/value pairs.
local stored = redis.call('HMGET', KEYS[1], 'next_fire', 'paused')
if stored[1] ~= ARGV[2] or stored[2] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'next_fire', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[6] == '' then return 1 end
redis.call('LPUSH', KEYS[6], ARGV[8])
redis.call('HSET', KEYS[3], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[7], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[9], ARGV[4], ARGV[6])
redis.call('HSET', KEYS[1], 'last_fired_at', ARGV[4], 'last_job_id', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'fires', 1)
return 1
