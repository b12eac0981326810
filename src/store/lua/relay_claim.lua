-- Resolves an inbound call or text and records it as an interaction, once per provider
-- reference: the reference key remembers the answer itself, so a retried webhook renders
-- what the first one was answered and records no second interaction.
-- Runs as a Redis function (`FCALL`), so its helpers and the functions below are defined
-- once, when the library is loaded, not on every call: `relay(keys, args)` at the end sets
-- the call's state and claims. Where functions are refused it runs as a script, the same
-- `relay(KEYS, ARGV)` (see src/store/function.rs).
-- KEYS: 1 the caller's bucket (a throwaway key when the caller ID is withheld), 2 ref key
-- ARGV: 1 tag, 2 proxy number, 3 now ms, 4 kind (v|s), 5 provider, 6 provider ref,
--       7 new interaction id, 8 ref ttl ms, 9 caller idx or '', 10 interaction.started
--       event id or '', 11 its body (`__SKEY__`, `__SIDE__`, `__ACCESS__` stand for the
--       session key, the caller's side and how the caller reached it), 12 '1' when the
--       pool asks an intercept before connecting, 13 the blind index of a PIN (typed at a
--       prompt, or the digits a text opens with) or '', 14 '' for a call or text arriving,
--       or which PIN prompt of the call the typed digits answer (1, 2, ..), 15 prompts a
--       call gets in all, 16 wrong PINs a caller may type on this number within a minute,
--       17 '1' when a PIN reaches its session only from its own participant's number,
--       18 sticky window ms
-- The ref value is `action|session key|interaction id[|sealed message]`: `a` announced,
-- `q` a call the app started (see `call_start.lua`) waiting for its bridge webhook, which
-- this script answers, `c` connected or relayed, `p` waiting for the app's intercept, `b`
-- blocked by it (with the app's message, sealed, or none for the pool's message), `g` a
-- call asked for a PIN: `g|<the caller's own session, if they can be connected on
-- silence>|<prompts answered>`.
-- Returns {'connect', `<session key>|<caller's side 0|1>|<sealed blob>[|options]`,
-- interaction id, replay 0|1, pending 0|1, access d|p, 1 when a text's PIN is to go},
-- {'block', sealed message or '', interaction id}, {'gather', prompt number, own route 0|1}
-- or {'announce', why} (why: '' nobody, 'wrong' a wrong PIN after the last prompt,
-- 'limited' too many wrong PINs, 'ended' a PIN of an ended session, 'prompt' a text that
-- needs a PIN).
-- A retried webhook gets its first answer only while the session is just ended at most:
-- providers retry within seconds, and an ended session must not connect for long.
local REPLAY_GRACE_MS = 120000
-- The call's state, set by `relay` before anything reads it: the functions below are
-- closures over these, made once.
local ref, proxy, kind, now, now_text, provider, provider_ref, iid, ttl, idx, event_id
local event_body, intercept, pin_idx, attempt, prompts, failure_limit, caller_check
local sticky_window, failures
-- The caller's entry, as text: read at most once a call.
local raw_entry = false
local function entry_text()
  if raw_entry == false then
    raw_entry = (idx ~= '' and redis.call('HGET', ubucket(idx), idx)) or nil
  end
  return raw_entry
end

-- The caller's session on this number, with the caller's side, if the caller holds one
-- whose other side is still there (not erased).
local function reach()
  local raw = entry_text()
  if not raw then return nil end
  local at = string.find(',' .. raw, ',' .. proxy .. '=', 1, true)
  if not at then return nil end
  local from = at + #proxy + 1
  local stop = string.find(raw, ',', from, true)
  local sid = string.sub(raw, from, (stop or 0) - 1)
  local rec = get_session(sid)
  if not rec then return nil end
  -- Kept as text: it is written into records, and Lua prints numbers slowly.
  local side = (rec.a == idx) and '0' or '1'
  if rec[side == '0' and 'b' or 'a'] == '' or (side == '1' and rec.b ~= idx) then return nil end
  return sid, rec, side
end

local function live(rec)
  return rec.t == 'o' and rec.e > now and (rec.m == 'b' or rec.m == kind)
end

-- Whether the caller is in an open PIN session on this number (then a call asks first).
local function has_pins_here()
  local raw = entry_text()
  if not raw or not string.find(raw, proxy .. '#', 1, true) then return false end
  for item in string.gmatch(raw, '[^,]+') do
    local number, sid = string.match(item, '^([^=~#]+)#(.+)$')
    if number == proxy then
      local rec = get_session(sid)
      if rec and live(rec) then return true end
    end
  end
  return false
end

local function answer(sid, rec, side)
  if rec.o ~= '' then return sid .. '|' .. side .. '|' .. rec.z .. '|' .. rec.o end
  return sid .. '|' .. side .. '|' .. rec.z
end

-- Wrong PINs are counted per caller (by blind index; withheld callers share one count) and
-- number: a hash per caller, a field per number, gone a minute after the caller's first
-- wrong PIN in the shard (erasing the caller removes it at once).
local function limited()
  return tonumber(redis.call('HGET', failures, proxy) or '0') >= failure_limit
end
local function count_failure()
  redis.call('HINCRBY', failures, proxy, 1)
  if redis.call('PTTL', failures) < 0 then redis.call('PEXPIRE', failures, 60000) end
end

-- The PIN session `pin_idx` names on this number, with the side whose PIN it is, if it may
-- connect this caller now; else nil and why.
local function by_pin()
  local v = redis.call('HGET', pin_key(proxy), pin_idx)
  if not v then return nil, 'wrong' end
  local sid, side = string.match(v, '^([^|]*)|([01])$')
  local rec = sid and get_session(sid)
  local pins = rec and pins_of(rec)
  if not (pins and pins[side == '0' and 1 or 2] == pin_idx) then return nil, 'wrong' end
  local mine, other = rec.a, rec.b
  if side == '1' then mine, other = rec.b, rec.a end
  -- Someone else's PIN is a wrong PIN: the answer does not tell whose it is.
  if caller_check and (idx == '' or mine ~= idx) then return nil, 'wrong' end
  if mine == '' or other == '' or not live(rec) then return nil, 'ended' end
  return sid, rec, side
end

-- Records the interaction and answers `connect`. A PIN session's interactions carry their
-- access in their code (`vp`, `sp`; `sP` for a text that opened with the PIN, which goes on
-- without it, so a retry is answered the same).
local function connect(sid, rec, side, typed)
  -- An idle deadline moves with every interaction; the reaper's schedule may stay early.
  if rec.w then
    rec.w = now + 1000 * (tonumber(string.match(rec.o, 'd(%d+)')) or 0)
    put_session(sid, rec)
  end
  local access = pins_of(rec) and 'p' or 'd'
  local code = kind
  if access == 'p' then code = kind .. (typed and 'P' or 'p') end
  redis.call('HSET', TAG .. 'i:' .. sid, iid,
    code .. '|' .. side .. '|started|' .. now_text .. '|||' .. provider .. '|' .. provider_ref)
  local pending = intercept
  redis.call('SET', ref, (pending and 'p|' or 'c|') .. sid .. '|' .. iid, 'PX', ttl)
  put_event(event_id, 'interaction.started',
    fill(fill(fill(event_body, 'SKEY', sid), 'SIDE', side), 'ACCESS',
      access == 'p' and 'pin' or 'direct'), '', now)
  return { 'connect', answer(sid, rec, side), iid, 0, pending and 1 or 0, access,
    typed and 1 or 0 }
end

local function announce(why)
  redis.call('SET', ref, 'a||', 'PX', ttl)
  return { 'announce', why }
end

-- A text that reached a PIN session opens the way back: each participant without a route on
-- this number gets one to the session, so replies need no PIN while it lasts. Neither may
-- hold another session's route here (invariant 1): those keep theirs.
local function open_routes(sid, rec)
  for _, p in ipairs({ rec.a, rec.b }) do
    local e = get_entry(p)
    local current = e.routes[proxy]
    local crec = current and current ~= sid and get_session(current)
    if current ~= sid and not (crec and crec.h > now) then
      e.routes[proxy] = sid
      put_entry(p, e, now, sticky_window, rec.h)
    end
  end
end

local function claim()
  local seen = redis.call('GET', ref)
  if seen then
    local action, sid, old, rest = string.match(seen, '^(%a)|([^|]*)|([^|]*)(.*)$')
    if action == 'q' then
      -- A call the app started, now answered by the participant it rang: it connects like
      -- a call from them, while the session is still open (a PIN session's too: the call
      -- names its session, so no route or PIN is needed).
      local rec = get_session(sid)
      local side = rec and idx ~= '' and ((rec.a == idx and '0') or (rec.b == idx and '1'))
      if not (side and rec.a ~= '' and rec.b ~= '' and rec.t == 'o' and rec.e > now) then
        return { 'announce', '' }
      end
      local pending = intercept
      redis.call('SET', ref, (pending and 'p|' or 'c|') .. sid .. '|' .. old, 'KEEPTTL')
      return { 'connect', answer(sid, rec, side), old, 0, pending and 1 or 0,
        pins_of(rec) and 'p' or 'd' }
    end
    if action == 'b' then
      -- A block message reveals nothing: it stays the answer even after the session ends.
      return { 'block', string.sub(rest, 2), old }
    end
    if action == 'c' or action == 'p' then
      -- The same answer as the first time, even if the session ended since; but nothing
      -- once its routes are gone (released or erased). An interaction of a PIN session, or
      -- a call the app started, reached its session without a route: it is found by its
      -- key, the caller's side by their index, or as recorded for a PIN caller not known.
      local irec = redis.call('HGET', TAG .. 'i:' .. sid, old)
      local code, iside = string.match(irec or '', '^(%a+)|([01])|')
      local found, rec, side
      if code and (#code == 2 or code == 'V') then
        rec = get_session(sid)
        if rec and rec.a ~= '' and rec.b ~= '' then
          found = sid
          side = (idx ~= '' and rec.a == idx and '0') or (idx ~= '' and rec.b == idx and '1')
            or iside
        end
      else
        found, rec, side = reach()
      end
      if found == sid and rec.e > now - REPLAY_GRACE_MS then
        return { 'connect', answer(sid, rec, side), old, 1, action == 'p' and 1 or 0,
          pins_of(rec) and 'p' or 'd', code == kind .. 'P' and 1 or 0 }
      end
      return { 'announce', '' }
    end
    if action ~= 'g' then return { 'announce', '' } end
    -- A call that was asked for a PIN.
    local own = sid
    if attempt == '' then
      -- The call's first webhook again: the first prompt again.
      return { 'gather', '1', own ~= '' and 1 or 0 }
    end
    local n, answered = tonumber(attempt), tonumber(old) or 0
    if n <= answered then
      -- A retried report of a prompt already answered, with the next prompt (a connection or
      -- the end would have changed the reference).
      return { 'gather', tostring(n + 1), own ~= '' and 1 or 0 }
    end
    -- Another prompt, or the end.
    local function again(why)
      if n < prompts then
        redis.call('SET', ref, 'g|' .. own .. '|' .. n, 'KEEPTTL')
        return { 'gather', tostring(n + 1), own ~= '' and 1 or 0 }
      end
      redis.call('SET', ref, 'a||', 'KEEPTTL')
      return { 'announce', why }
    end
    if pin_idx == '' then
      -- Nothing typed: the caller's own route, when they hold one.
      if own ~= '' then
        local found, rec, side = reach()
        if found == own and live(rec) then return connect(found, rec, side) end
        return announce('')
      end
      return again('')
    end
    if limited() then return announce('limited') end
    local psid, prec, pside = by_pin()
    if psid then return connect(psid, prec, pside) end
    if prec == 'ended' then return announce('ended') end
    count_failure()
    return again('wrong')
  end

  if attempt ~= '' then
    -- Digits for a call that was never asked for any (or is long forgotten): nobody.
    return announce('')
  end

  local sid, rec, side = reach()
  local direct = sid and live(rec)

  if kind == 'v' then
    if direct then
      if has_pins_here() then
        redis.call('SET', ref, 'g|' .. sid .. '|0', 'PX', ttl)
        return { 'gather', '1', 1 }
      end
      return connect(sid, rec, side)
    end
    if redis.call('EXISTS', pin_key(proxy)) == 1 then
      redis.call('SET', ref, 'g||0', 'PX', ttl)
      return { 'gather', '1', 0 }
    end
    return announce('')
  end

  -- A text: one that opens with a PIN goes to that PIN's session; any other to the caller's
  -- own session.
  if pin_idx ~= '' then
    if limited() then
      if direct then return connect(sid, rec, side) end
      return announce('limited')
    end
    local psid, prec, pside = by_pin()
    if psid then
      open_routes(psid, prec)
      return connect(psid, prec, pside, true)
    end
    if prec == 'wrong' then count_failure() end
    if direct then return connect(sid, rec, side) end
    if prec == 'ended' then return announce('ended') end
    return announce('prompt')
  end
  if direct then return connect(sid, rec, side) end
  if redis.call('EXISTS', pin_key(proxy)) == 1 then return announce('prompt') end
  return announce('')
end

-- KEYS and ARGV as above (TAG and common.lua's other per-call locals are set already).
local function relay(keys, args)
  ref, proxy, kind = keys[2], args[2], args[4]
  now, now_text = clock_ms_text()
  provider, provider_ref, iid, ttl, idx = args[5], args[6], args[7], args[8], args[9]
  event_id, event_body, intercept = args[10], args[11] or '', args[12] == '1'
  pin_idx, attempt, prompts = args[13] or '', args[14] or '', tonumber(args[15])
  failure_limit, caller_check, sticky_window = tonumber(args[16]), args[17] == '1',
    tonumber(args[18])
  failures = TAG .. 'pf:' .. (idx ~= '' and idx or '-')
  raw_entry = false
  return claim()
end
