-- Publishes to one room, atomically: idempotency check, offset, history append, PUBLISH.
-- KEYS[1] meta hash (epoch, top)   KEYS[2] history stream   KEYS[3] idempotency key
-- ARGV[1] a fresh epoch, used when the room has no stream (new, expired or lost)
-- ARGV[2] "1": ephemeral   ARGV[3] history size   ARGV[4] history ttl (ms)
-- ARGV[5] meta ttl (ms)   ARGV[6] "1": keyed   ARGV[7] body   ARGV[8] channel
-- ARGV[9] PUBLISH, or SPUBLISH on a Redis Cluster (the channel shares the keys' slot)
-- Returns {1, previous} for a duplicate (previous: "" or "epoch\noffset"),
-- {0, ""} for an ephemeral publication, {0, epoch, offset} otherwise.
--
-- The meta hash also keeps the `era` of the stream: the replication id of the Redis
-- process that last wrote it. Another era means another process took over (a restart, a
-- promoted replica), which may not have every publication the last one made and fanned
-- out. Its stream forks: a new epoch that goes on from the offsets this process holds,
-- with the old epoch kept as `prev` up to `fork`, where the two surely agree (read.lua
-- recovers a `since` of `prev` up to `fork` as one of the new epoch). Without the fork, a
-- lost offset would be given again to another publication and skipped, silently, by
-- every subscriber that had the lost one.
local meta, hist, idem = KEYS[1], KEYS[2], KEYS[3]
local ephemeral = ARGV[2] == '1'
local size = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local meta_ttl = tonumber(ARGV[5])
local keyed = ARGV[6] == '1'
local body, channel, publish = ARGV[7], ARGV[8], ARGV[9]

if keyed then
  local previous = redis.call('GET', idem)
  if previous then
    return {1, previous}
  end
end

if ephemeral then
  redis.call(publish, channel, 'e\n' .. body)
  if keyed then
    redis.call('SET', idem, '', 'PX', ttl)
  end
  return {0, ''}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local era = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local m = redis.call('HMGET', meta, 'epoch', 'top', 'era')
local epoch, top = m[1], 0
if not epoch then
  -- A new stream, or one Redis lost: a new epoch, offsets from 1, no stale history.
  epoch = ARGV[1]
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'epoch', epoch, 'era', era)
else
  top = tonumber(m[2] or '0')
  if m[3] ~= era then
    redis.call('HSET', meta, 'epoch', ARGV[1], 'prev', epoch, 'fork', top, 'era', era)
    epoch = ARGV[1]
  end
end
top = top + 1
redis.call('HSET', meta, 'top', top)
if redis.call('PTTL', meta) < math.max(ttl, meta_ttl) then
  redis.call('PEXPIRE', meta, math.max(ttl, meta_ttl))
end
if size > 0 then
  redis.call('XADD', hist, 'MAXLEN', size, top .. '-0', 'x', now + ttl, 'b', body)
  redis.call('PEXPIRE', hist, ttl)
else
  redis.call('DEL', hist)
end
redis.call(publish, channel, 'p' .. epoch .. '\n' .. top .. '\n' .. body)
if keyed then
  redis.call('SET', idem, epoch .. '\n' .. top, 'PX', ttl)
end
return {0, epoch, top}
