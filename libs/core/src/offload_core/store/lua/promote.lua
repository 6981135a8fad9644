-- Publishing delayed jobs that are due, each exactly once: in one script, so whichever process
-- runs it (and however many run it) a due entry leaves the scheduled set, its message goes onto
-- its queue's list and its record becomes `queued` together, or not at all. Due means by Redis's
-- clock, the one clock every promoter shares.
-- KEYS[1] SCHEDULED_KEY, KEYS[2] WAITING_KEY; ARGV most to publish, job key prefix, record TTL.
-- Returns {now, next due time or '', id, due, id, due, ...} of the jobs published.
redis.replicate_commands()  -- Redis 6: TIME before writes needs effects replication
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local published = {tostring(now), ''}
for i = 1, #due, 2 do
  local id, due_at = due[i], due[i + 1]
  local job = ARGV[2] .. id
  local parts = redis.call('HMGET', job .. ':message', 'list', 'message')
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', job .. ':message')
  -- A job cancelled (or expired) meanwhile is dropped, never published.
  if parts[1] and redis.call('HGET', job, 'status') == 'scheduled' then
    redis.call('LPUSH', parts[1], parts[2])
    redis.call('HSET', job, 'status', 'queued', 'updated_at', now, 'published_at', now)
    redis.call('EXPIRE', job, ARGV[3])
    redis.call('EXPIRE', job .. ':kwargs', ARGV[3])
    redis.call('ZADD', KEYS[2], now, id)
    published[#published + 1] = id
    published[#published + 1] = due_at
  end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next_due[2] then published[2] = next_due[2] end
return published
