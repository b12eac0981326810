-- Records a text the app sends in a session and queues it, in one step: the interaction, the
-- reference its delivery reports find it by, the sealed text in the shard's outbound queue
-- and the interaction.started event are all written, or none is. Once per reference: the
-- same reference again (a retried request) writes nothing and names the first interaction.
-- KEYS: 1 ref key. ARGV: 1 tag, 2 session key, 3 recipient's blind index, 4 recipient's side
--       (0|1), 5 new interaction id, 6 provider, 7 reference, 8 ref ttl ms, 9 queued text id,
--       10 sealed text, 11 interaction.started event id or '', 12 its body
-- Returns {'queued', interaction id}, {'again', interaction id}, {'closed'}, {'stranger'}
-- or {'missing'}.
local seen = redis.call('GET', KEYS[1])
if seen then
  local _, iid = string.match(seen, '^%a|([^|]*)|([^|]*)')
  return { 'again', iid or '' }
end
local sid, idx, side = ARGV[2], ARGV[3], ARGV[4]
local now, now_text = clock_ms_text()
local rec = get_session(sid)
if not rec then return { 'missing' } end
if not (rec.t == 'o' and rec.e > now) then return { 'closed' } end
-- The participant may have been erased since the caller read the session.
local held = side == '0' and rec.a or rec.b
if held == '' or held ~= idx then return { 'stranger' } end
-- The proxy number stands for the other side: the recipient sees the text coming from it.
local from = side == '0' and '1' or '0'
local iid, provider, ref = ARGV[5], ARGV[6], ARGV[7]
redis.call('HSET', TAG .. 'i:' .. sid, iid,
  'S|' .. from .. '|queued|' .. now_text .. '|||' .. provider .. '|' .. ref)
redis.call('SET', KEYS[1], 'c|' .. sid .. '|' .. iid, 'PX', ARGV[8])
-- The shard's outbound queue (store::outbox), as outbox_put.lua writes it.
local ox = TAG .. 'ox:'
local m = ox .. 'm:' .. ARGV[9]
if redis.call('EXISTS', m) == 0 then
  redis.call('HSET', m, 'b', ARGV[10], 's', 'q', 'n', 0)
  redis.call('ZADD', ox .. 'q', now, ARGV[9])
  ring(ox .. 'bell')
end
put_event(ARGV[11], 'interaction.started', ARGV[12] or '', '', now)
return { 'queued', iid }
