-- wsloop: append a message to a room's history and publish it, in one atomic step.
-- KEYS[1]  the room's stream, {<prefix><room>}:h
-- ARGV[1]  the channel to publish on, <prefix>\0<room> (the node channel)
-- ARGV[2]  t (text) or b (binary)
-- ARGV[3]  the payload
-- ARGV[4]  messages kept (XADD MAXLEN)
-- ARGV[5]  milliseconds the history lives after its last message (0: for ever)
-- ARGV[6]  optional: SPUBLISH in a Redis Cluster (the default is PUBLISH)
-- Returns {offset, epoch}. The epoch lives in every entry: a stream that is lost
-- (Redis restarted empty, deleted, expired) takes its epoch with it.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local epoch, offset
if #last == 0 then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  offset = 1
else
  offset = tonumber(string.match(last[1][1], '^(%d+)')) + 1
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'e' then epoch = f[i + 1] end
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], offset .. '-1', 'e', epoch, 'k', ARGV[2], 'd', ARGV[3])
if tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local verb = 'PUBLISH'
if ARGV[6] == 'SPUBLISH' then verb = 'SPUBLISH' end
redis.call(verb, ARGV[1], 'w2 ' .. ARGV[2] .. ' ' .. epoch .. ' ' .. offset .. '\n' .. ARGV[3])
return {offset, epoch}
