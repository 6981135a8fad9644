-- KEYS[1] job key, KEYS[2] dead-letter key, KEYS[3] the index of all, KEYS[4] INDEXES_KEY.
-- ARGV now, job ttl, error, job id, task, queue, payload (JSON), dead-letter ttl, dead-letter
-- max, INDEX_PREFIX, KEY_PREFIX, OWNER_INDEX_PREFIX. Task and queue fall back to the job's record when empty (the
-- worker's main process, after a hard time limit, has no request). Returns the queue.
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'updated_at', ARGV[1], 'error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local job = redis.call('HMGET', KEYS[1], 'task', 'queue', 'attempts', 'replay_of', 'owner')
local task = ARGV[5] ~= '' and ARGV[5] or (job[1] or '')
local queue = ARGV[6] ~= '' and ARGV[6] or (job[2] or '')
local fields = {'id', ARGV[4], 'task', task, 'queue', queue, 'payload', ARGV[7], 'error', ARGV[3],
                'attempts', job[3] or 0, 'failed_at', ARGV[1]}
if job[4] then
  table.insert(fields, 'replay_of')
  table.insert(fields, job[4])
end
if job[5] then
  table.insert(fields, 'owner')
  table.insert(fields, job[5])
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[8])
local score = math.floor(now * 1000)
local newest = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if newest[2] and score <= tonumber(newest[2]) then score = tonumber(newest[2]) + 1 end
score = string.format('%.0f', score)
local indexes = {KEYS[3], ARGV[10] .. queue .. ':*', ARGV[10] .. '*:' .. task, ARGV[10] .. queue .. ':' .. task}
if job[5] then table.insert(indexes, ARGV[12] .. job[5]) end
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, score, ARGV[4])
  redis.call('SADD', KEYS[4], index)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf',
           '(' .. string.format('%.0f', (now - tonumber(ARGV[8])) * 1000))
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[9])
if excess > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #dropped, 2 do redis.call('DEL', ARGV[11] .. dropped[i]) end
end
-- The index of all defines what is kept; every other index drops what it no longer holds.
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
for _, index in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. oldest[2])
  redis.call('EXPIRE', index, ARGV[8])
end
redis.call('EXPIRE', KEYS[4], ARGV[8])
return queue
