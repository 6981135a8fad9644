-- KEYS ledger, usage, expiry (as blob_reserve.lua); ARGV blob key, and optionally a time (ms):
-- then the blob is released only if its expiry is not later (it was not renewed meanwhile).
-- Takes the blob's charge off its owner's usage. Returns the size released, -1 if renewed.
if ARGV[2] then
  local expiry = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if expiry and tonumber(expiry) > tonumber(ARGV[2]) then
    return -1
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local space = string.find(entry, ' ', 1, true)
local size = tonumber(string.sub(entry, 1, space - 1))
local owner = string.sub(entry, space + 1)
if tonumber(redis.call('HINCRBY', KEYS[2], owner, -size)) <= 0 then
  redis.call('HDEL', KEYS[2], owner)
end
return size
