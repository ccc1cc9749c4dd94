-- Presence of rooms: entries per connection that expire unless their node adds them again.
--
-- Per room (base = prefix .. ':{' .. room .. '}:'): base..'p' hash connection -> entry,
-- base..'pl' zset of connections (score 0, for paging in connection order), base..'pe' zset
-- connection -> expiry (ms), base..'pu' hash user -> connection count. And one zset for the
-- whole deployment, prefix..':presence', "<len>:<room><connection>" -> expiry, which the
-- nodes' sweeps walk. An entry is field(user) .. ('-' or '+' .. info); field(s) is
-- #s .. ':' .. s. Expired entries are removed by whoever finds them first (a sweep or a
-- listing), with a leave message on the room's channel: exactly once, in order with the
-- room's other events.
--
-- ARGV[1] operation, ARGV[2] key prefix, then:
--   add    room connection user entry ttl-ms        -> 1
--   refresh ttl-ms, then room connection user entry, repeated -> 1
--   remove room connection                          -> 1
--   list   room cursor ("" for the first page) limit -> {connections, users, more, c1, e1, ...}
--   sweep  max                                     -> how many expired entries it removed
local op, prefix = ARGV[1], ARGV[2]
local global = prefix .. ':presence'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(s)
  return #s .. ':' .. s
end

local function room_keys(room)
  local base = prefix .. ':{' .. room .. '}:'
  return base .. 'p', base .. 'pl', base .. 'pe', base .. 'pu', base .. 'c'
end

local function user_of(entry)
  local n, at = string.match(entry, '^(%d+):()')
  return string.sub(entry, at, at + tonumber(n) - 1)
end

local function drop_user(pu, user)
  if redis.call('HINCRBY', pu, user, -1) <= 0 then
    redis.call('HDEL', pu, user)
  end
end

local function remove(room, conn, announce)
  local p, pl, pe, pu, channel = room_keys(room)
  redis.call('ZREM', global, field(room) .. conn)
  local entry = redis.call('HGET', p, conn)
  if not entry then
    return
  end
  drop_user(pu, user_of(entry))
  redis.call('HDEL', p, conn)
  redis.call('ZREM', pl, conn)
  redis.call('ZREM', pe, conn)
  if announce then
    redis.call('PUBLISH', channel, 'l\n' .. field(conn) .. entry)
  end
end

local function add(room, conn, user, entry, ttl)
  local p, pl, pe, pu = room_keys(room)
  local old = redis.call('HGET', p, conn)
  if old then
    local old_user = user_of(old)
    if old_user ~= user then
      drop_user(pu, old_user)
      redis.call('HINCRBY', pu, user, 1)
    end
  else
    redis.call('HINCRBY', pu, user, 1)
  end
  redis.call('HSET', p, conn, entry)
  redis.call('ZADD', pl, 0, conn)
  local expiry = now_ms() + ttl
  redis.call('ZADD', pe, expiry, conn)
  redis.call('ZADD', global, expiry, field(room) .. conn)
  -- The room's keys outlive their entries only briefly, whoever sweeps.
  for _, key in ipairs({p, pl, pe, pu}) do
    redis.call('PEXPIRE', key, 2 * ttl)
  end
end

if op == 'add' then
  add(ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
  return 1
elseif op == 'refresh' then
  local ttl = tonumber(ARGV[3])
  for i = 4, #ARGV, 4 do
    add(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ttl)
  end
  return 1
elseif op == 'remove' then
  remove(ARGV[3], ARGV[4], false)
  return 1
elseif op == 'list' then
  local room, cursor, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local p, pl, pe, pu = room_keys(room)
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', pe, '-inf', now_ms())) do
    remove(room, conn, true)
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
elseif op == 'sweep' then
  local expired = redis.call('ZRANGEBYSCORE', global, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[3]))
  for _, member in ipairs(expired) do
    local n, at = string.match(member, '^(%d+):()')
    local room = string.sub(member, at, at + tonumber(n) - 1)
    local conn = string.sub(member, at + tonumber(n))
    remove(room, conn, true)
  end
  return #expired
end
return redis.error_reply('unknown presence operation ' .. tostring(op))
