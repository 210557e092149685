-- One user's request rate across the cluster, as a GCRA (generic cell rate algorithm) over one
-- key holding the user's theoretical arrival time (TAT) in microseconds: the same arithmetic as
-- governor's keyed limiter on each node (server/src/limits/cluster.rs explains the use).
--
-- KEYS[1]  the user's key, `{prefix}:rate:votes:{user}`
-- ARGV[1]  the emission interval T in microseconds: one request per T on average
-- ARGV[2]  the burst tolerance in microseconds: T * (burst - 1)
-- ARGV[3]  optional: "now" in microseconds; only tests pass it. Otherwise Redis's own clock
--          decides, so that every node shares one clock whatever their clocks say.
--
-- Returns {1, 0} when the request is allowed (and counted), {0, wait} when it is refused and
-- may come again after `wait` microseconds. A refused request changes nothing.
--
-- Times are whole microseconds (about 1.8e15 now, exact in Lua's doubles up to 2^53) and are
-- written with string.format('%d'), because tostring keeps only 14 digits. The key expires
-- when the TAT has passed: a missing key is then the same as a full bucket. Reading TIME
-- before writing needs Redis 5 or newer (scripts replicate their effects, not their text).

local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == nil then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end

local allowed_from = tat - tolerance
if now < allowed_from then
  return {0, allowed_from - now}
end

local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, 0}
