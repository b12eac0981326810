-- Ends, extends or advances one session; the only script that changes a live session.
-- KEYS: 1 nums, 2 x, 3 s:<session>, 4 u:A, 5 u:B
-- ARGV: 1 tag, 2 now ms, 3 session key, 4 op, 5 op argument, 6 sealed blob or '',
--       7 event id for an expiry noticed now, 8 its body, 9 event id for the op's own
--       ending (close, erase), 10 its body, 11 sealed numbers for both or ''
-- Each ending records its session.closed event in this same step, so it is sent once.
--   op 'close'  : arg = reason ('closed'); routes stay held for the cool-off.
--   op 'erase'  : routes and load are released now; the record stays readable, scrubbed
--                 (ARGV[6] is the new blob, arg is the erased side 'a' or 'b').
--   op 'extend' : arg = new expiry ms.
--   op 'reap'   : advance whatever is due (expiry, end of cool-off, end of readability).
-- Returns {status, state} where status is 'ok', 'missing', 'closed' or 'not_due'.
local nums, x, s, ua, ub = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[2])
local skey, op, arg = ARGV[3], ARGV[4], ARGV[5]

local f = redis.call('HMGET', s, 't', 'e', 'h', 'n', 'co')
local t, e, h, number, co = f[1], tonumber(f[2]), tonumber(f[3]), f[4], tonumber(f[5])
if not t then
  redis.call('ZREM', x, skey)
  return { 'missing', '' }
end

-- Rewrite this session's route records, leaving alone any that a later session now owns.
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

-- Routes and load go; the record stays for reading until 'h' when keep is set.
local function release(keep)
  each_route(function(key) redis.call('HDEL', key, number) end)
  add_load(nums, number, -1)
  if keep then
    redis.call('HSET', s, 't', 'r')
    redis.call('ZADD', x, h, skey)
  else
    redis.call('DEL', s, TAG .. 'i:' .. skey)
    redis.call('ZREM', x, skey)
  end
end

local open = (t == 'o' and e > now)

if op == 'extend' then
  if not open then return { 'closed', t } end
  local new_e = tonumber(arg)
  h = new_e + co
  each_route(function(key, r)
    r.open_until, r.held_until = new_e, h
    redis.call('HSET', key, number, format_route(r))
    push_expiry(key, h)
  end)
  redis.call('HSET', s, 'e', new_e, 'h', h)
  redis.call('PEXPIREAT', s, h + 86400000)
  redis.call('ZADD', x, new_e, skey)
  return { 'ok', 'o' }
end

-- A session past its expiry is expired, whoever notices first.
if t == 'o' and not open then
  redis.call('HSET', s, 't', 'c', 'r', 'expired')
  stop_open(e)
  t = 'c'
  put_event(ARGV[7], 'session.closed', ARGV[8] or '', ARGV[11], now)
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
  put_event(ARGV[9], 'session.closed', ARGV[10] or '', ARGV[11], now)
  if h <= now then release(false) else redis.call('ZADD', x, h, skey) end
  return { 'ok', 'c' }
end

if op == 'erase' then
  h = now + co
  redis.call('HSET', s, arg, '', 'h', h)
  put_blob(s, ARGV[6])
  if open then
    redis.call('HSET', s, 'r', 'erased', 'e', now)
    stop_open(now)
    put_event(ARGV[9], 'session.closed', ARGV[10] or '', '', now)
  end
  if t ~= 'r' then release(true) else redis.call('ZADD', x, h, skey) end
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
if t == 'c' then release(false) else
  redis.call('DEL', s, TAG .. 'i:' .. skey)
  redis.call('ZREM', x, skey)
end
return { 'ok', 'gone' }
