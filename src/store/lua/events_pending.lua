-- KEYS[1] the shard's event queue (ev:q). ARGV: 1 tag, 2 how many queued events to look at.
-- Returns {queued, created ms of the oldest looked at, or -1}. The queue is ordered by when
-- each event is next due, not by age, so the oldest is sought among the first ARGV[2]:
-- bounded work per scrape, exact while the queue is no longer than that.
local q = KEYS[1]
local oldest = -1
for _, id in ipairs(redis.call('ZRANGE', q, 0, tonumber(ARGV[2]) - 1)) do
  local c = tonumber(redis.call('HGET', EV .. 'm:' .. id, 'c'))
  if c and (oldest < 0 or c < oldest) then oldest = c end
end
return { redis.call('ZCARD', q), oldest }
