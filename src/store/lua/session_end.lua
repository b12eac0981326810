-- Ends, extends or advances one session; the only script that changes a live session.
-- KEYS: 1 nums, 2 x, 3 s:<session>, 4 u:A, 5 u:B
-- ARGV: 1 tag, 2 (unused: the time is Redis's own), 3 session key, 4 op, 5 op argument,
--       6 sealed blob or '', 7 event id for an expiry noticed now, 8 its body, 9 event id
--       for the op's own ending (close, erase), 10 its body, 11 sealed numbers or '',
--       12 (erase) the record's `a` and `b` as the caller read them, `a|b`
-- Each ending records its session.closed event in this same step, so it is sent once.
--   op 'close'  : arg = reason ('closed'); routes stay held for the cool-off.
--   op 'erase'  : arg = the erased side ('a' or 'b'). Its route goes now; the other side's
--                 route stays held for the cool-off, without the erased number; the record
--                 is scrubbed (ARGV[6] is the new blob). Refused ('retry') when the record
--                 changed since the caller read it, so two erasures cannot undo each other.
--   op 'extend' : arg = new expiry ms.
--   op 'reap'   : advance whatever is due (expiry, end of cool-off).
-- Returns {status, state} where status is 'ok', 'missing', 'closed', 'not_due' or 'retry'.
local nums, x, s, ua, ub = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- Every instance's requests meet here: Redis's clock is the one that orders them, so a
-- request delayed on its way cannot act on a state that has already moved on.
local now = clock_ms()
local skey, op, arg = ARGV[3], ARGV[4], ARGV[5]

local f = redis.call('HMGET', s, 't', 'e', 'h', 'n', 'co', 'a', 'b')
local t, e, h, number, co = f[1], tonumber(f[2]), tonumber(f[3]), f[4], tonumber(f[5])
if not t then
  redis.call('ZREM', x, skey)
  return { 'missing', '' }
end

-- This session's route records, leaving alone any that a later session now owns.
local function each_route(fn)
  for _, key in ipairs({ ua, ub }) do
    local rec = redis.call('HGET', key, number)
    local r = rec and parse_route(rec)
    if r and r.sid == skey then fn(key, r) end
  end
end

local function stop_open(at)
  if redis.call('HINCRBY', nums, number .. ':o', -1) == 0 then
    redis.call('HINCRBY', nums, '#busy', -1)
  end
  redis.call('HINCRBY', nums, '#open', -1)
  redis.call('HSET', s, 'x', at)
end

-- The end of the cool-off: routes, load, record and interactions go.
local function release()
  each_route(function(key) redis.call('HDEL', key, number) end)
  add_load(nums, number, -1)
  redis.call('DEL', s, TAG .. 'i:' .. skey)
  redis.call('ZREM', x, skey)
end

local open = (t == 'o' and e > now)

if op == 'extend' then
  if not open then return { 'closed', t } end
  -- Both sides must still hold their routes: a session one of whose routes is gone (its
  -- side erased) cannot come back.
  local held = 0
  each_route(function() held = held + 1 end)
  if held < 2 then return { 'closed', t } end
  local new_e = tonumber(arg)
  h = new_e + co
  each_route(function(key, r)
    r.open_until, r.held_until = new_e, h
    redis.call('HSET', key, number, format_route(r))
    push_expiry(key, h)
  end)
  redis.call('HSET', s, 'e', new_e, 'h', h)
  redis.call('ZADD', x, new_e, skey)
  return { 'ok', 'o' }
end

-- A session past its expiry is expired, whoever notices first.
if t == 'o' and not open then
  redis.call('HSET', s, 't', 'c', 'r', 'expired')
  stop_open(e)
  t = 'c'
  put_event(ARGV[7], 'session.closed', ARGV[8] or '', ARGV[11], now, { f[6], f[7] })
end

if op == 'close' then
  if not open then return { 'closed', t } end
  h = now + co
  each_route(function(key, r)
    r.open_until, r.held_until = now, h
    redis.call('HSET', key, number, format_route(r))
  end)
  redis.call('HSET', s, 't', 'c', 'r', arg, 'e', now, 'h', h)
  stop_open(now)
  put_event(ARGV[9], 'session.closed', ARGV[10] or '', ARGV[11], now, { f[6], f[7] })
  if h <= now then release() else redis.call('ZADD', x, h, skey) end
  return { 'ok', 'c' }
end

if op == 'erase' then
  if (f[6] or '') .. '|' .. (f[7] or '') ~= ARGV[12] then return { 'retry', t } end
  -- The marker of the idempotent create that made this session would lead a retry back to
  -- the erased participant's session: it goes with them.
  local idem = redis.call('HGET', s, 'i')
  if idem then
    redis.call('DEL', TAG .. 'ik:' .. idem)
    redis.call('HDEL', s, 'i')
  end
  if t ~= 'o' and h <= now then
    release()
    return { 'ok', 'gone' }
  end
  local erased_key = (arg == 'a') and ua or ub
  if open then
    h = now + co
    redis.call('HSET', s, 't', 'c', 'r', 'erased', 'e', now, 'h', h)
    stop_open(now)
    put_event(ARGV[9], 'session.closed', ARGV[10] or '', '', now)
  end
  each_route(function(key, r)
    if key == erased_key then
      redis.call('HDEL', key, number)
    else
      -- The other side keeps its cool-off (so the number reaches nobody new), but no
      -- longer holds the erased number.
      r.open_until, r.held_until, r.other = math.min(r.open_until, now), h, ''
      redis.call('HSET', key, number, format_route(r))
    end
  end)
  redis.call('HSET', s, arg, '')
  put_blob(s, ARGV[6])
  if h <= now then release() else redis.call('ZADD', x, h, skey) end
  return { 'ok', open and 'erased' or t }
end

-- op == 'reap'
if t == 'o' then
  redis.call('ZADD', x, e, skey)
  return { 'not_due', t }
end
if h > now then
  redis.call('ZADD', x, h, skey)
  return { 'not_due', t }
end
if t == 'r' then
  -- Records from before erasure kept the other side's route: nothing is held any more.
  redis.call('DEL', s, TAG .. 'i:' .. skey)
  redis.call('ZREM', x, skey)
else
  release()
end
return { 'ok', 'gone' }
