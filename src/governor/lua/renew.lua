-- Renews the leases of sessions still in use, and puts back any that expired meanwhile (or
-- were taken while Redis was unreachable): the sessions are open, so they must count.
-- KEYS: 1 sessions
-- ARGV: 1 lease ms, 2 time ('' = Redis's clock), 3... lease ids
-- Returns how many leases were missing.
local now = now_ms(2)
local lease = tonumber(ARGV[1])
local missing = 0
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    missing = missing + 1
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
if #ARGV >= 3 then
  redis.call('PEXPIRE', KEYS[1], lease + MARGIN)
end
return missing
