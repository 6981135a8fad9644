"""State in Redis: the job store (the one writer of job status), its listing index, dead
letters, notification targets, queue state, images; the Lua scripts in lua/."""
