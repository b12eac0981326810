-- Resolves an inbound call or text and records it as an interaction, once per provider
-- reference: the reference key remembers the answer itself, so a retried webhook renders
-- what the first one was answered and records no second interaction.
-- KEYS: 1 the caller's bucket (a throwaway key when the caller ID is withheld), 2 ref key
-- ARGV: 1 tag, 2 proxy number, 3 now ms, 4 kind (v|s), 5 provider, 6 provider ref,
--       7 new interaction id, 8 ref ttl ms, 9 caller idx or '', 10 interaction.started
--       event id or '', 11 its body (`__SKEY__`, `__SIDE__` stand for the session key and
--       the caller's side), 12 '1' when the pool asks an intercept before connecting
-- The ref value is `action|session key|interaction id[|sealed message]`: `a` announced,
-- `c` connected or relayed, `p` waiting for the app's intercept, `b` blocked by it (with
-- the app's message, sealed, or none for the pool's message).
-- Returns {'connect', `<session key>|<caller's side 0|1>|<sealed blob>`, interaction id,
-- replay 0|1, pending 0|1},
-- {'block', sealed message or '', interaction id} or {'announce'}.
local ref = KEYS[2]
local proxy, kind = ARGV[2], ARGV[4]
local now, now_text = clock_ms_text()
-- A retried webhook gets its first answer only while the session is just ended at most:
-- providers retry within seconds, and an ended session must not connect for long.
local REPLAY_GRACE_MS = 120000
local provider, provider_ref, iid, ttl, idx = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

-- The caller's session on this number, with the caller's side, if the caller holds one
-- whose other side is still there (not erased).
local function reach()
  if idx == '' then return nil end
  local sid = route_of(idx, proxy)
  local rec = sid and get_session(sid)
  if not rec then return nil end
  -- Kept as text: it is written into records, and Lua prints numbers slowly.
  local side = (rec.a == idx) and '0' or '1'
  if rec[side == '0' and 'b' or 'a'] == '' or (side == '1' and rec.b ~= idx) then return nil end
  return sid, rec, side
end

local function answer(sid, rec, side)
  if rec.o ~= '' then return sid .. '|' .. side .. '|' .. rec.z .. '|' .. rec.o end
  return sid .. '|' .. side .. '|' .. rec.z
end

local seen = redis.call('GET', ref)
if seen then
  local action, sid, old, rest = string.match(seen, '^(%a)|([^|]*)|([^|]*)(.*)$')
  if action == 'b' then
    -- A block message reveals nothing: it stays the answer even after the session ends.
    return { 'block', string.sub(rest, 2), old }
  end
  if action == 'c' or action == 'p' then
    -- The same answer as the first time, even if the session ended since; but nothing
    -- once its routes are gone (released or erased).
    local found, rec, side = reach()
    if found == sid and rec.e > now - REPLAY_GRACE_MS then
      return { 'connect', answer(sid, rec, side), old, 1, action == 'p' and 1 or 0 }
    end
  end
  return { 'announce' }
end

local sid, rec, side = reach()
if not (sid and rec.t == 'o' and rec.e > now and (rec.m == 'b' or rec.m == kind)) then
  redis.call('SET', ref, 'a||', 'PX', ttl)
  return { 'announce' }
end

-- An idle deadline moves with every interaction; the reaper's schedule may stay early.
if rec.w then
  rec.w = now + 1000 * (tonumber(string.match(rec.o, 'd(%d+)')) or 0)
  put_session(sid, rec)
end

local ikey = TAG .. 'i:' .. sid
redis.call('HSET', ikey, iid,
  kind .. '|' .. side .. '|started|' .. now_text .. '|||' .. provider .. '|' .. provider_ref)
local pending = ARGV[12] == '1'
redis.call('SET', ref, (pending and 'p|' or 'c|') .. sid .. '|' .. iid, 'PX', ttl)
put_event(ARGV[10], 'interaction.started',
  fill(fill(ARGV[11] or '', 'SKEY', sid), 'SIDE', side), '', now)
return { 'connect', answer(sid, rec, side), iid, 0, pending and 1 or 0 }
