-- Records a call the app starts, before the provider is asked to place it: the interaction
-- (`initiated`), and the reference its bridge webhook and status callbacks name, waiting
-- for the bridge (`q`). Only while the session is open and carries calls.
-- KEYS: 1 ref key
-- ARGV: 1 tag, 2 session key, 3 the interaction's side (the participant the proxy number
--       stands for: the other of the one rung first), 4 interaction id, 5 provider,
--       6 reference, 7 ref ttl ms, 8 interaction.started event id or '', 9 its body,
--       10 the interaction's code (`V`, a call the app started)
-- Returns 'ok', 'gone' (no such session), 'closed' or 'mode' (texts only).
local sid, side, iid = ARGV[2], ARGV[3], ARGV[4]
local now, now_text = clock_ms_text()
local rec = get_session(sid)
if not rec then return 'gone' end
if not (rec.t == 'o' and rec.e > now) then return 'closed' end
if rec.m == 's' then return 'mode' end
-- A call is an interaction: it moves an idle deadline as a relayed one does.
if rec.w then
  rec.w = now + 1000 * (tonumber(string.match(rec.o, 'd(%d+)')) or 0)
  put_session(sid, rec)
end
redis.call('HSET', TAG .. 'i:' .. sid, iid,
  ARGV[10] .. '|' .. side .. '|initiated|' .. now_text .. '|||' .. ARGV[5] .. '|' .. ARGV[6])
redis.call('SET', KEYS[1], 'q|' .. sid .. '|' .. iid, 'PX', ARGV[7])
put_event(ARGV[8], 'interaction.started', ARGV[9] or '', '', now)
return 'ok'
