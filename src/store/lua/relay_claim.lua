-- Resolves an inbound call or text and records it as an interaction, once per provider
-- reference: the reference key remembers the answer itself, so a retried webhook renders
-- what the first one was answered and records no second interaction.
-- KEYS: 1 u:<caller idx> (a throwaway key when the caller ID is withheld), 2 ref key
-- ARGV: 1 tag, 2 proxy number, 3 now ms, 4 kind (v|s), 5 provider, 6 provider ref,
--       7 new interaction id, 8 ref ttl ms, 9 caller idx or '', 10 interaction.started
--       event id or '', 11 its body (`__SKEY__`, `__SIDE__` stand for the session key and
--       the caller's side), 12 '1' when the pool asks an intercept before connecting
-- The ref value is `action|session key|interaction id[|sealed message]`: `a` announced,
-- `c` connected or relayed, `p` waiting for the app's intercept, `b` blocked by it (with
-- the app's message, sealed, or none for the pool's message).
-- Returns {'connect', route record, interaction id, replay 0|1, pending 0|1},
-- {'block', sealed message or '', interaction id} or {'announce'}.
local u, ref = KEYS[1], KEYS[2]
local proxy, now, kind = ARGV[2], clock_ms(), ARGV[4]
-- A retried webhook gets its first answer only while the session is just ended at most:
-- providers retry within seconds, and an ended session must not connect for long.
local REPLAY_GRACE_MS = 120000
local provider, provider_ref, iid, ttl, idx = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

local seen = redis.call('GET', ref)
if seen then
  local action, sid, old, rest = string.match(seen, '^(%a)|([^|]*)|([^|]*)(.*)$')
  if action == 'b' then
    -- A block message reveals nothing: it stays the answer even after the session ends.
    return { 'block', string.sub(rest, 2), old }
  end
  if (action == 'c' or action == 'p') and idx ~= '' then
    -- The same answer as the first time, even if the session ended since; but nothing
    -- once its routes are gone (released or erased).
    local rec = redis.call('HGET', u, proxy)
    local r = rec and parse_route(rec)
    if r and r.sid == sid and r.other ~= '' and r.open_until > now - REPLAY_GRACE_MS then
      return { 'connect', rec, old, 1, action == 'p' and 1 or 0 }
    end
  end
  return { 'announce' }
end

local rec = idx ~= '' and redis.call('HGET', u, proxy) or false
local r = rec and parse_route(rec)
if not (r and r.open_until > now and r.other ~= '' and (r.mode == 'b' or r.mode == kind)) then
  redis.call('SET', ref, 'a||', 'PX', ttl)
  return { 'announce' }
end

local side = (redis.call('HGET', TAG .. 's:' .. r.sid, 'a') == idx) and 0 or 1
local ikey = TAG .. 'i:' .. r.sid
redis.call('HSET', ikey, iid,
  kind .. '|' .. side .. '|started|' .. now .. '|||' .. provider .. '|' .. provider_ref)
local pending = ARGV[12] == '1'
redis.call('SET', ref, (pending and 'p|' or 'c|') .. r.sid .. '|' .. iid, 'PX', ttl)
put_event(ARGV[10], 'interaction.started',
  fill(fill(ARGV[11] or '', 'SKEY', r.sid), 'SIDE', side), '', now)
return { 'connect', rec, iid, 0, pending and 1 or 0 }
