-- Sends that never reached Exchange (no MAIL FROM was sent), or acquisitions abandoned while
-- the script may have run, give everything back: the lease, the place in the rate window and
-- the recipients. Giving back what was never taken changes nothing.
-- KEYS: 1 rate, 2 daily, 3 daily total, 4 sessions
-- ARGV: pairs of id, recipients
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local n = ARGV[i + 1]
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[1], id)
  if redis.call('ZREM', KEYS[2], id .. ':' .. n) == 1 then
    if redis.call('DECRBY', KEYS[3], tonumber(n)) <= 0 then
      redis.call('DEL', KEYS[3])
    end
  end
end
return 1
