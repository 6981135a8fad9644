-- KEYS clock, all-index, then the image's new tag keys, then the tags it leaves; ARGV now (µs),
-- ttl (s), image id, oldest score kept, count of new tag keys. Scores are microseconds made
-- unique by the clock, so a page cursor never splits a tie, and age out with the images.
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if now <= last then now = last + 1 end
-- As an integer string: Lua would write a number with 14 significant digits.
now = string.format('%d', now)
redis.call('SET', KEYS[1], now)
local count = tonumber(ARGV[5])
for i = 2, #KEYS do
  local key = KEYS[i]
  if i <= count + 2 then
    redis.call('ZADD', key, now, ARGV[3])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[4])
    redis.call('EXPIRE', key, ARGV[2])
  else
    redis.call('ZREM', key, ARGV[3])
  end
end
return now
