-- The deployment's presence expiry index, for the nodes' sweeps (see presence.lua): a sorted
-- set "<len>:<room><connection>" -> expiry (ms, by this Redis's clock, which the sweep reads).
--
-- KEYS[1] the index (prefix..':{g}:presence')
-- ARGV[1] operation, then:
--   add   member ttl-ms, repeated                -> 1
--   take  max: removes and returns up to max expired members, for one sweep to handle (two
--         nodes sweeping at once never take the same member)
local index, op = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if op == 'add' then
  for i = 2, #ARGV, 2 do
    redis.call('ZADD', index, now + tonumber(ARGV[i + 1]), ARGV[i])
  end
  return 1
elseif op == 'take' then
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  if #expired > 0 then
    redis.call('ZREM', index, unpack(expired))
  end
  return expired
end
return redis.error_reply('unknown presence index operation ' .. tostring(op))
