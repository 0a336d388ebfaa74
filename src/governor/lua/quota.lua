-- Exchange said SubmissionQuotaExceeded: the mailbox is held, for every replica, until the
-- oldest recipients recorded leave the day, or for `unknown` ms when none are; never shorter
-- than `min` ms. A longer hold in force is kept.
-- KEYS: 1 daily, 2 quota hold
-- ARGV: 1 daily window ms, 2 unknown ms, 3 min ms, 4 time (tests only)
-- Returns the hold's ms from now.
local now = now_ms(4)
local day = tonumber(ARGV[1])
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - day), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local untl
if #oldest > 0 then
  untl = tonumber(oldest[2]) + day
else
  untl = now + tonumber(ARGV[2])
end
untl = math.max(untl, now + tonumber(ARGV[3]))
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current > untl then
  untl = current
end
redis.call('SET', KEYS[2], untl, 'PX', untl - now)
return untl - now
