-- Removes what a shard still holds under an erased participant's blind index: its sticky
-- memory on both sides and route records that no live session owns any more.
-- KEYS: 1 k:<idx>, 2 u:<idx>. ARGV: 1 tag, 2 idx, 3 now ms.
local k, u = KEYS[1], KEYS[2]
local idx, now = ARGV[2], clock_ms()
local partners = redis.call('HKEYS', k)
for _, other in ipairs(partners) do
  redis.call('HDEL', TAG .. 'k:' .. other, idx)
end
redis.call('DEL', k)
-- Events that carry the participant's number (pools that send numbers) lose their numbers.
local events = TAG .. 'ev:p:' .. idx
for _, id in ipairs(redis.call('SMEMBERS', events)) do
  redis.call('HDEL', TAG .. 'ev:m:' .. id, 'z')
end
redis.call('DEL', events)
local all = redis.call('HGETALL', u)
for i = 1, #all, 2 do
  local r = parse_route(all[i + 1])
  if not r or r.held_until <= now then redis.call('HDEL', u, all[i]) end
end
return #partners
