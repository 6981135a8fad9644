-- KEYS[1] dead-letter key; ARGV job id. Never recreates a dead letter deleted meanwhile.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'replayed_as', ARGV[1])
return 1
