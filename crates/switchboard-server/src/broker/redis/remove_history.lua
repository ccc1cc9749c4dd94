-- Removes a room's history: a new epoch, the offset counter continues. Creates the stream
-- when it does not exist.
-- KEYS[1] meta hash   KEYS[2] history stream   ARGV[1] a fresh epoch   ARGV[2] meta ttl (ms)
-- Returns {epoch, top}.
local meta, hist = KEYS[1], KEYS[2]
local top = tonumber(redis.call('HGET', meta, 'top') or '0')
redis.call('DEL', hist)
redis.call('HSET', meta, 'epoch', ARGV[1], 'top', top)
-- Removed history recovers nothing: no position of an older epoch either (publish.lua).
redis.call('HDEL', meta, 'prev', 'fork')
if redis.call('PTTL', meta) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', meta, tonumber(ARGV[2]))
end
return {ARGV[1], top}
