-- KEYS ledger (hash: blob key -> "<size> <owner>"), usage (hash: owner -> bytes), expiry (zset:
-- blob key -> expiry in ms); ARGV blob key, owner, size, quota (-1: none), expiry (ms).
-- Charges the blob to its owner unless that takes the owner over the quota; a blob stored again
-- under the same key replaces its old charge. Returns {1, usage after} or {0, usage now}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_size, old_owner = 0, false
if old then
  local space = string.find(old, ' ', 1, true)
  old_size = tonumber(string.sub(old, 1, space - 1))
  old_owner = string.sub(old, space + 1)
end
local size = tonumber(ARGV[3])
local used = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = used + size
if old_owner == ARGV[2] then after = after - old_size end
local quota = tonumber(ARGV[4])
-- A blob that does not grow the owner's usage is always taken, even over the quota.
if quota >= 0 and after > quota and after > used then
  return {0, used}
end
if old_owner then
  if tonumber(redis.call('HINCRBY', KEYS[2], old_owner, -old_size)) <= 0 then
    redis.call('HDEL', KEYS[2], old_owner)
  end
end
redis.call('HINCRBY', KEYS[2], ARGV[2], size)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return {1, after}
