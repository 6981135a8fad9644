-- KEYS[1] sorted set of held slots (member: job id, score: lease end in ms of Redis's clock);
-- ARGV job id, most slots, lease ms. Leases past their end are dropped first: a worker killed while
-- holding a slot frees it when its lease ends. The same job taking a slot again (a redelivery after
-- its worker died) renews its own. Returns {1, 0} when held, else {0, ms until the first lease ends}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
local lease_end = now + tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], lease_end, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(first[2]) - now)}
