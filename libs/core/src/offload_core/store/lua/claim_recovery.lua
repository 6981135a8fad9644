-- KEYS[1] job key, KEYS[2] WAITING_KEY; ARGV now, job id, most recoveries. Claims a republish of a
-- job whose message is lost: only while it is still queued (or retrying) and waiting, at most so often.
local status = redis.call('HGET', KEYS[1], 'status')
if (status ~= 'queued' and status ~= 'retrying') or not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  return 'gone'
end
if redis.call('HINCRBY', KEYS[1], 'recoveries', 1) > tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 'exhausted'
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 'republish'
