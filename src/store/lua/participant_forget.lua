-- Removes what a shard still holds under an erased participant's blind index: its sticky
-- memory on both sides and routes that no live session owns any more.
-- KEYS: 1 the participant's bucket. ARGV: 1 tag, 2 idx, 3 now ms, 4 sticky window ms.
local idx, now, window = ARGV[2], clock_ms(), tonumber(ARGV[4])
local short = string.sub(idx, 1, 8)
local e = get_entry(idx)
-- A stub names the other participant by the start of their index, which also names their
-- bucket: their stubs about this participant are found there.
local partners = 0
for _, st in ipairs(e.stubs) do
  partners = partners + drop_stubs_about(st.other, short, now, window)
end
e.stubs = {}
-- Events that carry the participant's number (pools that send numbers) lose their numbers.
local events = TAG .. 'ev:p:' .. idx
for _, id in ipairs(redis.call('SMEMBERS', events)) do
  redis.call('HDEL', TAG .. 'ev:m:' .. id, 'z')
end
redis.call('DEL', events)
-- Wrong PINs counted against the participant (see `relay_claim.lua`).
redis.call('DEL', TAG .. 'pf:' .. idx)
for number, sid in pairs(e.routes) do
  local rec = get_session(sid)
  if not rec or rec.h <= now then e.routes[number] = nil end
end
for i = #e.pins, 1, -1 do
  local rec = get_session(e.pins[i].sid)
  if not rec or rec.h <= now then table.remove(e.pins, i) end
end
put_entry(idx, e, now, window, 0)
return partners
