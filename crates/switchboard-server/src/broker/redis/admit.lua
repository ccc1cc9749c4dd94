-- Cluster-wide connection caps (redis/caps.rs): admits one connection of a user or an IP
-- unless `limit` connections of it are live in the deployment.
--
-- KEYS[1]  the count: a sorted set, member `<node>:<slot>` per connection, score its expiry
-- ARGV[1]  now, milliseconds since the Unix epoch
-- ARGV[2]  the new connection's member
-- ARGV[3]  its expiry (now + presence_ttl)
-- ARGV[4]  the limit
-- ARGV[5]  the key's ttl, milliseconds
--
-- Returns 1 (admitted and counted) or 0 (refused). One script, so that two connections
-- racing on two nodes cannot both take the last place.
local key = KEYS[1]
-- The members of killed nodes (or lost releases) are no longer refreshed: gone once expired.
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
if redis.call('ZCARD', key) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', key, ARGV[3], ARGV[2])
redis.call('PEXPIRE', key, ARGV[5])
return 1
