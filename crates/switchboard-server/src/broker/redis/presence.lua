-- Presence of rooms: entries per connection that expire unless their node adds them again.
--
-- The room's keys (base = prefix .. ':{' .. room .. '}:', one hash tag, so one Redis Cluster
-- slot): base..'p' hash connection -> entry, base..'pl' zset of connections (score 0, for
-- paging in connection order), base..'pe' zset connection -> expiry (ms), base..'pu' hash
-- user -> connection count, and the room's channel base..'c'. An entry is
-- field(user) .. ('-' or '+' .. info); field(s) is #s .. ':' .. s. Expired entries are
-- removed by whoever finds them first (a sweep or a listing), with a leave message on the
-- room's channel: exactly once, in order with the room's other events.
--
-- The deployment's expiry index (prefix..':{g}:presence') lives in another slot: the broker
-- updates it with presence_index.lua in a second call. The two are not atomic, and need not
-- be: an index entry without its room entry is dropped by the sweep ('expire' finds nothing),
-- a room entry without its index entry is indexed again by its node's next refresh.
--
-- KEYS[1] a base..'p' of the (first) room: routes the call to its slot. Every room of one
-- call must be on that slot (on a single server, any rooms).
-- ARGV[1] operation, ARGV[2] key prefix, ARGV[3] PUBLISH or SPUBLISH, then:
--   add    room connection user entry ttl-ms       -> 1
--   refresh ttl-ms, then room connection user entry, repeated -> 1
--   remove room connection                         -> 1
--   list   room cursor ("" for the first page) limit -> {connections, users, more, c1, e1, ...}
--   expire room, then connection, repeated (taken from the index) -> {removed, c1, ms-left1,
--          ...}: the expired ones are removed with a leave; those still alive (refreshed
--          since they were indexed) are listed with the time they have left, to index again.
local op, prefix, publish = ARGV[1], ARGV[2], ARGV[3]
local p, pl, pe, pu, channel

-- Points p, pl, pe, pu and channel at `room`'s keys.
local function use(room)
  local base = prefix .. ':{' .. room .. '}:'
  p, pl, pe, pu, channel = base .. 'p', base .. 'pl', base .. 'pe', base .. 'pu', base .. 'c'
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(s)
  return #s .. ':' .. s
end

local function user_of(entry)
  local n, at = string.match(entry, '^(%d+):()')
  return string.sub(entry, at, at + tonumber(n) - 1)
end

local function drop_user(user)
  if redis.call('HINCRBY', pu, user, -1) <= 0 then
    redis.call('HDEL', pu, user)
  end
end

-- Returns whether there was an entry.
local function remove(conn, announce)
  local entry = redis.call('HGET', p, conn)
  if not entry then
    return false
  end
  drop_user(user_of(entry))
  redis.call('HDEL', p, conn)
  redis.call('ZREM', pl, conn)
  redis.call('ZREM', pe, conn)
  if announce then
    redis.call(publish, channel, 'l\n' .. field(conn) .. entry)
  end
  return true
end

local function add(conn, user, entry, expiry)
  local old = redis.call('HGET', p, conn)
  if old then
    local old_user = user_of(old)
    if old_user ~= user then
      drop_user(old_user)
      redis.call('HINCRBY', pu, user, 1)
    end
  else
    redis.call('HINCRBY', pu, user, 1)
  end
  redis.call('HSET', p, conn, entry)
  redis.call('ZADD', pl, 0, conn)
  redis.call('ZADD', pe, expiry, conn)
end

-- The room's keys outlive their entries only briefly, whoever sweeps.
local function keep(ttl)
  for _, key in ipairs({p, pl, pe, pu}) do
    redis.call('PEXPIRE', key, 2 * ttl)
  end
end

if op == 'add' then
  local ttl = tonumber(ARGV[8])
  use(ARGV[4])
  add(ARGV[5], ARGV[6], ARGV[7], now_ms() + ttl)
  keep(ttl)
  return 1
elseif op == 'refresh' then
  local ttl = tonumber(ARGV[4])
  local expiry = now_ms() + ttl
  for i = 5, #ARGV, 4 do
    use(ARGV[i])
    add(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], expiry)
    keep(ttl)
  end
  return 1
elseif op == 'remove' then
  use(ARGV[4])
  remove(ARGV[5], false)
  return 1
elseif op == 'list' then
  use(ARGV[4])
  local cursor, limit = ARGV[5], tonumber(ARGV[6])
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', pe, '-inf', now_ms())) do
    remove(conn, true)
  end
  local out = {redis.call('ZCARD', pl), redis.call('HLEN', pu), 0}
  if limit == 0 then
    return out
  end
  local from = '-'
  if cursor ~= '' then
    from = '(' .. cursor
  end
  local page = redis.call('ZRANGEBYLEX', pl, from, '+', 'LIMIT', 0, limit + 1)
  if #page > limit then
    out[3] = 1
  end
  for i = 1, math.min(#page, limit) do
    out[#out + 1] = page[i]
    out[#out + 1] = redis.call('HGET', p, page[i]) or ''
  end
  return out
elseif op == 'expire' then
  use(ARGV[4])
  local now = now_ms()
  local out = {0}
  for i = 5, #ARGV do
    local conn = ARGV[i]
    local expiry = redis.call('ZSCORE', pe, conn)
    if expiry and tonumber(expiry) > now then
      out[#out + 1] = conn
      out[#out + 1] = tonumber(expiry) - now
    elseif remove(conn, true) then
      out[1] = out[1] + 1
    end
  end
  return out
end
return redis.error_reply('unknown presence operation ' .. tostring(op))
