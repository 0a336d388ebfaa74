-- Sends made while this replica could not reach Redis, recorded now that it can (by age, so
-- the window counts them where they happened). Each send at most once: a window entry moves
-- only later (GT: a send acquired while Redis answered keeps counting from its end), recipients
-- are added once (NX).
-- KEYS: 1 rate, 2 daily, 3 daily total
-- ARGV: 1 rate window ms (0 = rate off), 2 daily window ms (0 = daily off), 3 time (tests only),
--       then per send: id, ms since it finished (-1: still running, counted at release),
--       ms since it started, recipients
local now = now_ms(3)
local window = tonumber(ARGV[1])
local day = tonumber(ARGV[2])
local added = 0
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local finished = tonumber(ARGV[i + 1])
  local started = tonumber(ARGV[i + 2])
  local n = tonumber(ARGV[i + 3])
  if window > 0 and finished >= 0 and finished < window then
    added = added + redis.call('ZADD', KEYS[1], 'GT', now - finished, id)
    redis.call('PEXPIRE', KEYS[1], window + MARGIN)
  end
  if day > 0 and n > 0 and started < day then
    if redis.call('ZADD', KEYS[2], 'NX', now - started, id .. ':' .. n) == 1 then
      redis.call('INCRBY', KEYS[3], n)
      redis.call('PEXPIRE', KEYS[2], day + MARGIN)
      redis.call('PEXPIRE', KEYS[3], day + MARGIN)
    end
  end
end
return added
