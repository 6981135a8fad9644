-- KEYS[1] sorted set of held slots, KEYS[2] the wake-up list waiters block on; ARGV job id, most
-- slots, lease ms. Frees the job's slot and wakes one waiter (Redis serves blocked clients in the
-- order they blocked); the list holds at most as many wake-ups as there are slots, so a wake-up
-- nobody waited for costs a later waiter one extra look, never a spin.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
  return 1
end
return 0
