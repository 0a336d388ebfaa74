-- Shared by every script of the shared governor (src/governor/coordinator.rs), put before each.
-- The time is Redis's own clock in milliseconds, so replicas with skewed clocks agree. The
-- last ARGV may name a time instead (the tests of the window edges do; the relay never does):
-- TIME_ARG is the index the calling script reads it from.
local function now_ms(time_arg)
  local given = ARGV[time_arg]
  if given and given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Keys outlive their newest entry by this much, then Redis drops them: nothing stays forever.
local MARGIN = 60000
-- A daily entry's member is '<send id>:<recipients>'.
local function count_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
