-- KEYS[1] the idempotency key; ARGV claim, lease. Returns the earlier claim, or nil once claimed.
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
