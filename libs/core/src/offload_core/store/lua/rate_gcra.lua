-- KEYS[1] the limit's theoretical arrival time (TAT, microseconds of Redis's clock); ARGV emission
-- interval, burst tolerance and longest wait, all in microseconds. GCRA: a request conforms once
-- now >= TAT - tolerance. One that conforms within the longest wait takes its place (the TAT moves
-- on by one interval) and learns how long to wait for it (0: go now); a later one takes nothing.
-- Returns {admitted 0/1, wait us, us until the whole burst is back, requests left right now}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local longest_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = math.max(0, tat - tolerance - now)
if wait > longest_wait then
  return {0, math.ceil(wait), math.ceil(tat - now), 0}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
local left = math.max(0, math.floor((now + tolerance - next_tat) / interval) + 1)
return {1, math.ceil(wait), math.ceil(next_tat - now), left}
