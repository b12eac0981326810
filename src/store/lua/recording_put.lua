-- Attaches a provider's recording to an interaction, once: a provider resending its callback
-- finds the recording there and records nothing more, so the app hears of it once.
-- KEYS: 1 the session's interactions hash
-- ARGV: 1 tag, 2 session key, 3 interaction id, 4 the recording (sealed), 5 now ms,
--       6 recording.completed event id or '', 7 its body, 8 what its delivery puts in (sealed)
-- Returns 1 when attached; 0 when the interaction is unknown (its session is gone), already
-- has a recording, or one of its participants was erased (whose recordings hush forgets).
if not redis.call('HGET', KEYS[1], ARGV[3]) then return 0 end
local rec = get_session(ARGV[2])
if not rec or rec.a == '' or rec.b == '' then return 0 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[3], ARGV[4]) == 0 then return 0 end
-- The delivery's sealed part goes with the participants' events, so erasing either of them
-- takes the recording's URL out of an event not yet delivered.
put_event(ARGV[6], 'recording.completed', ARGV[7], ARGV[8], tonumber(ARGV[5]), { rec.a, rec.b })
return 1
