-- The configuration hold shared by every replica: 'get', 'set' or 'lift'.
-- KEYS: 1 hold (string '<from token 0/1>:<advice>', expiring)
-- ARGV: 1 verb; set: 2 value, 3 ms; lift: 2 only a token hold (0/1)
-- get returns {value, ms left} or false.
local verb = ARGV[1]
if verb == 'get' then
  local v = redis.call('GET', KEYS[1])
  if not v then
    return false
  end
  return {v, redis.call('PTTL', KEYS[1])}
elseif verb == 'set' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  return 1
elseif verb == 'lift' then
  local v = redis.call('GET', KEYS[1])
  if v and (ARGV[2] == '0' or string.sub(v, 1, 2) == '1:') then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
return redis.error_reply('unknown verb')
