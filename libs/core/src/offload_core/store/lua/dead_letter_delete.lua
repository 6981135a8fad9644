-- KEYS[1] dead-letter key, KEYS[2] INDEXES_KEY; ARGV id. Returns 1 if it existed.
local existed = redis.call('DEL', KEYS[1])
for _, index in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('ZREM', index, ARGV[1]) end
return existed
