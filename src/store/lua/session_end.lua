-- Ends, extends or advances one session; the only script that changes a live session.
-- KEYS: 1 nums, 2 xb, 3 the session's bucket
-- ARGV: 1 tag, 2 (unused: the time is Redis's own), 3 session key, 4 op, 5 op argument,
--       6 sealed blob or '', 7 event id for an expiry noticed now, 8 its body, 9 event id
--       for the op's own ending (close, erase), 10 its body, 11 sealed numbers or '',
--       12 (erase) the record's `a` and `b` as the caller read them, `a|b`,
--       13 sticky window ms, 14 (erase) the metadata sealed apart, or '' to leave it
-- Each ending records its session.closed event in this same step, so it is sent once.
--   op 'close'  : arg = reason ('closed'); routes stay held for the cool-off.
--   op 'erase'  : arg = the erased side ('a' or 'b'). Its route goes now; the other side's
--                 route stays held for the cool-off, and reaches nobody: the record no
--                 longer names the erased side, whose number leaves the blob (ARGV[6] is
--                 the new blob). Refused ('retry') when the record changed since the caller
--                 read it, so two erasures cannot undo each other.
--   op 'extend' : arg = new expiry ms.
--   op 'reap'   : advance whatever is due (expiry, end of cool-off).
-- Returns {status, state} where status is 'ok', 'missing', 'closed', 'not_due' or 'retry'.
local nums = KEYS[1]
-- Every instance's requests meet here: Redis's clock is the one that orders them, so a
-- request delayed on its way cannot act on a state that has already moved on.
local now = clock_ms()
local skey, op, arg = ARGV[3], ARGV[4], ARGV[5]
local window = tonumber(ARGV[13])

local rec = get_session(skey)
if not rec then return { 'missing', '' } end
local number = rec.n

local pins = pins_of(rec)

-- Whether a side still holds this session's route (a later session may own the pair now),
-- or its PIN item.
local function holds(idx)
  if idx == '' then return false end
  local e = get_entry(idx)
  if e.routes[number] == skey then return true end
  for _, p in ipairs(e.pins) do
    if p.sid == skey then return true end
  end
  return false
end

local function stop_open(at)
  if redis.call('HINCRBY', nums, number .. ':o', -1) == 0 then
    redis.call('HINCRBY', nums, '#busy', -1)
  end
  redis.call('HINCRBY', nums, '#open', -1)
  rec.x = at
end

-- The end of the hold: routes become sticky memory; load, record and interactions go.
local function release()
  local sides = { rec.a, rec.b }
  for i, idx in ipairs(sides) do
    if idx ~= '' then
      local e = get_entry(idx)
      local changed = pins and drop_pin_item(e, skey)
      if e.routes[number] == skey then
        e.routes[number] = nil
        local other = sides[3 - i]
        if other ~= '' then add_stub(e, number, other, now) end
        changed = true
      end
      if changed then put_entry(idx, e, now, window, 0) end
    end
    if pins then free_pin(number, pins[i], skey) end
  end
  add_load(nums, number, -1)
  del_session(skey)
  redis.call('DEL', TAG .. 'i:' .. skey)
end

local open = (rec.t == 'o' and rec.e > now)

if op == 'extend' then
  if not open then return { 'closed', rec.t } end
  -- Both sides must still hold their routes: a session one of whose routes is gone (its
  -- side erased) cannot come back.
  if not (holds(rec.a) and holds(rec.b)) then return { 'closed', rec.t } end
  -- The new expiry is the hard one; an idle deadline before it still ends the session first.
  rec.e, rec.hard = tonumber(arg), nil
  rec.h = rec.e + rec.co
  put_session(skey, rec)
  local ends = (rec.w and rec.w < rec.e) and rec.w or rec.e
  due_push(skey, ends)
  push_expiry(ubucket(rec.a), rec.h)
  push_expiry(ubucket(rec.b), rec.h)
  return { 'ok', 'o' }
end

-- A session past its expiry (or its idle deadline, which `get_session` made its `e`) is
-- expired, whoever notices first.
if rec.t == 'o' and not open then
  rec.t, rec.r = 'c', rec.hard and 'idle' or 'expired'
  stop_open(rec.e)
  put_session(skey, rec)
  put_event(ARGV[7], 'session.closed', ARGV[8] or '', ARGV[11], now, { rec.a, rec.b })
end

-- The record is kept until its hold ends, then released.
local function settle()
  if rec.h <= now then release() else
    put_session(skey, rec)
    due_push(skey, rec.h)
  end
end

if op == 'close' then
  if not open then return { 'closed', rec.t } end
  rec.t, rec.r, rec.e, rec.h = 'c', arg, now, now + rec.co
  stop_open(now)
  put_event(ARGV[9], 'session.closed', ARGV[10] or '', ARGV[11], now, { rec.a, rec.b })
  settle()
  return { 'ok', 'c' }
end

if op == 'erase' then
  if rec.a .. '|' .. rec.b ~= ARGV[12] then return { 'retry', rec.t } end
  -- The marker of the idempotent create that made this session would lead a retry back to
  -- the erased participant's session: it goes with them.
  if rec.i ~= '' then
    redis.call('DEL', TAG .. 'ik:' .. rec.i)
    rec.i = ''
  end
  -- The erased side's route goes now, leaving no sticky memory on either side; the other
  -- side keeps its cool-off (so the number reaches nobody new).
  local erased = rec[arg]
  if erased ~= '' then
    local e = get_entry(erased)
    local changed = pins and drop_pin_item(e, skey)
    if e.routes[number] == skey then
      e.routes[number] = nil
      changed = true
    end
    if changed then put_entry(erased, e, now, window, 0) end
  end
  -- The erased side's PIN goes too; the other's stays taken for the cool-off, reaching nobody.
  if pins then free_pin(number, pins[arg == 'a' and 1 or 2], skey) end
  rec[arg] = ''
  if rec.t ~= 'o' and rec.h <= now then
    release()
    return { 'ok', 'gone' }
  end
  if open then
    rec.t, rec.r, rec.e, rec.h = 'c', 'erased', now, now + rec.co
    stop_open(now)
    put_event(ARGV[9], 'session.closed', ARGV[10] or '', '', now)
  end
  rec.z = ARGV[6]
  if (ARGV[14] or '') ~= '' then redis.call('SET', TAG .. 'y:' .. skey, ARGV[14]) end
  settle()
  return { 'ok', open and 'erased' or rec.t }
end

-- op == 'reap'
if rec.t == 'o' then
  due_push(skey, rec.e)
  return { 'not_due', rec.t }
end
if rec.h > now then
  due_push(skey, rec.h)
  return { 'not_due', rec.t }
end
release()
return { 'ok', 'gone' }
