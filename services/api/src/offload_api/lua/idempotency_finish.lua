-- KEYS[1] the idempotency key; ARGV our claim, the finished claim, ttl. Marks the first answer
-- as given, only if the claim is still ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
