-- KEYS[1] the idempotency key; ARGV our claim. Releases it only if it is still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
