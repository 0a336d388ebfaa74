-- One acquisition for one send of `recipients` recipients: checks the quota hold, the rate
-- window, the daily budget and the session semaphore, and takes all three at once or none.
-- KEYS: 1 rate (zset id -> ms), 2 daily (zset 'id:n' -> ms), 3 daily total (integer),
--       4 sessions (zset lease id -> expiry ms), 5 quota hold (string: until ms)
-- ARGV: 1 id, 2 recipients, 3 rate (0 = off), 4 rate window ms, 5 daily (0 = off),
--       6 sessions allowed (0 = off), 7 lease ms, 8 daily window ms, 9 time (tests only)
-- Returns {0, now}: go; {1, ms}: rate or daily budget frees in ms; {2, 0}: every session
-- slot is leased; {3, ms}: the mailbox is held for ms more.
local now = now_ms(9)
local id = ARGV[1]
local n = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local daily = tonumber(ARGV[5])
local sessions = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local day = tonumber(ARGV[8])

local held = tonumber(redis.call('GET', KEYS[5]) or '0')
if held > now then
  return {3, held - now}
end

local wait = 0
if rate > 0 then
  -- An entry counts while now - score < window.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rate then
    -- count - rate + 1 entries must leave; the last of them is at index count - rate.
    local e = redis.call('ZRANGE', KEYS[1], count - rate, count - rate, 'WITHSCORES')
    wait = math.max(wait, tonumber(e[2]) + window - now)
  end
end

if daily > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - day)
  if #old > 0 then
    local gone = 0
    for _, m in ipairs(old) do
      gone = gone + count_of(m)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - day)
    if redis.call('DECRBY', KEYS[3], gone) <= 0 then
      redis.call('DEL', KEYS[3])
    end
  end
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  -- A batch larger than the whole budget goes when the day is empty.
  local excess = used + math.min(n, daily) - daily
  if excess > 0 and used > 0 then
    local freed, start, found = 0, 0, false
    while not found do
      local batch = redis.call('ZRANGE', KEYS[2], start, start + 99, 'WITHSCORES')
      if #batch == 0 then
        break
      end
      for i = 1, #batch, 2 do
        freed = freed + count_of(batch[i])
        if freed >= excess then
          wait = math.max(wait, tonumber(batch[i + 1]) + day - now)
          found = true
          break
        end
      end
      start = start + 100
    end
  end
end

if wait > 0 then
  return {1, wait}
end

if sessions > 0 then
  -- A lease counts until its expiry; a replica that died frees its slots that way.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= sessions then
    return {2, 0}
  end
  redis.call('ZADD', KEYS[4], now + lease, id)
  redis.call('PEXPIRE', KEYS[4], lease + MARGIN)
end
if rate > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window + MARGIN)
end
if daily > 0 and n > 0 then
  redis.call('ZADD', KEYS[2], now, id .. ':' .. n)
  redis.call('INCRBY', KEYS[3], n)
  redis.call('PEXPIRE', KEYS[2], day + MARGIN)
  redis.call('PEXPIRE', KEYS[3], day + MARGIN)
end
return {0, now}
