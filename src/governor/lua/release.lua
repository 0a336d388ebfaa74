-- A send has finished: its session lease ends, and it counts against the rate from now (when
-- its MAIL FROM reached Exchange lies between the permit and now; counting it at the end keeps
-- sends spaced a window apart from arriving inside one). Also records a send made while this
-- replica could not reach Redis, so it counts once Redis is back.
-- KEYS: 1 rate, 2 sessions
-- ARGV: 1 id, 2 rate on (0/1), 3 rate window ms, 4 time (tests only)
local now = now_ms(4)
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  -- GT: never earlier than an end already recorded (by a backfill of the same send).
  redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + MARGIN)
end
return 1
