-- Reads a room's stream: its position and, as asked, its history. Creates the stream (new
-- epoch, offset 0) when it does not exist, and drops expired publications first.
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] a fresh epoch   ARGV[2] meta ttl (ms)   ARGV[3] limit (-1: all)
-- ARGV[4] "1": newest first (without since)   ARGV[5] since epoch ("" without since)
-- ARGV[6] since offset
-- Returns {epoch, top, status, offset1, body1, offset2, body2, ...}; status "1" recoverable,
-- "0" not recoverable, "m" since is from another epoch (no publications). A since of the
-- epoch the stream forked from (publish.lua), up to the fork, counts as one of this epoch.
local meta, hist = KEYS[1], KEYS[2]
local meta_ttl = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local reverse = ARGV[4] == '1'
local since_epoch = ARGV[5]
local since = tonumber(ARGV[6])

local m = redis.call('HMGET', meta, 'epoch', 'top', 'prev', 'fork')
local epoch, top = m[1], 0
if not epoch then
  epoch = ARGV[1]
  local era = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'era', era)
else
  top = tonumber(m[2] or '0')
end
if redis.call('PTTL', meta) < meta_ttl then
  redis.call('PEXPIRE', meta, meta_ttl)
end

-- Expired publications leave from the oldest end, so what is retained stays contiguous.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local entries = redis.call('XRANGE', hist, '-', '+', 'COUNT', 64)
  if #entries == 0 then break end
  local keep = nil
  for _, entry in ipairs(entries) do
    if tonumber(entry[2][2]) > now then
      keep = entry[1]
      break
    end
  end
  if keep then
    redis.call('XTRIM', hist, 'MINID', keep)
    break
  end
  local last = tonumber(string.match(entries[#entries][1], '^(%d+)'))
  redis.call('XTRIM', hist, 'MINID', (last + 1) .. '-0')
end

local out = {epoch, top}
local entries
if since_epoch ~= '' then
  if since_epoch ~= epoch and not (since_epoch == m[3] and since <= tonumber(m[4])) then
    out[3] = 'm'
    return out
  end
  if since > top then
    out[3] = '0'
    return out
  end
  local oldest = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  local first = top + 1
  if #oldest > 0 then
    first = tonumber(string.match(oldest[1][1], '^(%d+)'))
  end
  out[3] = (since + 1 >= first) and '1' or '0'
  if limit == 0 then return out end
  if limit < 0 then
    entries = redis.call('XRANGE', hist, (since + 1) .. '-0', '+')
  else
    entries = redis.call('XRANGE', hist, (since + 1) .. '-0', '+', 'COUNT', limit)
  end
else
  out[3] = '1'
  if limit == 0 then return out end
  local a, b, cmd = '-', '+', 'XRANGE'
  if reverse then a, b, cmd = '+', '-', 'XREVRANGE' end
  if limit < 0 then
    entries = redis.call(cmd, hist, a, b)
  else
    entries = redis.call(cmd, hist, a, b, 'COUNT', limit)
  end
end
for _, entry in ipairs(entries) do
  out[#out + 1] = string.match(entry[1], '^(%d+)')
  out[#out + 1] = entry[2][4]
end
return out
