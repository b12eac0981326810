-- Claims a proxy number for a new session: both routes, the number's load and the session
-- record, in one step, or nothing (invariants 1 and 4).
-- KEYS: 1 nums, 2 x (transitions), 3 u:A, 4 u:B, 5 k:A, 6 k:B, 7 s:<session>
-- ARGV: 1 tag, 2 created ms (as the caller reports it; checks use Redis's clock),
--       3 expires ms, 4 cool-off ms, 5 mode class (v|s|b), 6 idx A, 7 idx B,
--       8 geo levels to try in order ('a1415,c1,*'), 9 random, 10 session key,
--       11 sealed A, 12 sealed B, 13 sealed session blob, 14 sticky window ms,
--       15 A's area tag or '', 16 A's country tag, 17 session.created event id or '',
--       18 its body (`__PROXY__` stands for the number chosen), 19 sealed numbers or '',
--       20 pool.low event id or '', 21 the pool's low threshold (percent), 22 its body
--       (`__BUSY__`, `__TOTAL__` stand for the shard's busy and total numbers),
--       23 idempotency digest or '', 24 request fingerprint, 25 marker ttl ms

-- Returns {0, due} when no number is free, {1, number, level, due} on success, and
-- {2, session key, fingerprint, due} when this shard already holds the session of the
-- idempotent request (a retry of a create whose answer was lost).
local nums, x, ua, ub, ka, kb, s = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
-- Redis's clock, not the caller's: a request delayed on its way still sees time as it is.
local now = clock_ms()
local expires = tonumber(ARGV[3])
local cooloff = tonumber(ARGV[4])
local class = ARGV[5]
local idx_a, idx_b = ARGV[6], ARGV[7]
local rnd = tonumber(ARGV[9])
local skey = ARGV[10]
local sealed_a, sealed_b, blob = ARGV[11], ARGV[12], ARGV[13]
local sticky_window = tonumber(ARGV[14])
local area_tag, country_tag = ARGV[15], ARGV[16]

local due = redis.call('ZCOUNT', x, '-inf', now) > 0 and 1 or 0

-- The marker `ik:<digest>` is written with the session, in this same step: a request that
-- ran here and never heard back left it, and its retry finds the session instead of
-- making a second one.
local idem = ARGV[23] or ''
local marker = TAG .. 'ik:' .. idem
if idem ~= '' then
  local found = redis.call('GET', marker)
  if found then
    local key, fp = string.match(found, '^([^|]*)|(.*)$')
    return { 2, key, fp, due }
  end
end

-- Numbers either participant holds: open or cooling off. Records past their hold time are
-- free whatever the reaper's lag.
local held = {}
local nheld = 0
for _, key in ipairs({ ua, ub }) do
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local r = parse_route(all[i + 1])
    if r and r.held_until > now and not held[all[i]] then
      held[all[i]] = true
      nheld = nheld + 1
    end
  end
end

local function eligible(number)
  return redis.call('ZSCORE', TAG .. 'l:' .. class .. ':*', number) ~= false
end

-- Walk a load index from the least loaded, starting at a random place among the ties and
-- reading at most nheld + 1 members per segment: O(log n + held).
local function walk(z)
  local n = redis.call('ZCARD', z)
  if n == 0 then return nil end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local ties = redis.call('ZCOUNT', z, first[2], first[2])
  local start = rnd % ties
  local segments = { { start, ties - 1 }, { 0, start - 1 }, { ties, n - 1 } }
  for _, seg in ipairs(segments) do
    local lo, hi = seg[1], seg[2]
    while lo <= hi do
      local upto = math.min(hi, lo + nheld)
      for _, m in ipairs(redis.call('ZRANGE', z, lo, upto)) do
        if not held[m] then return m end
      end
      lo = upto + 1
    end
  end
  return nil
end

local chosen = nil
local sticky = redis.call('HGET', ka, idx_b)
if sticky then
  local number, at = string.match(sticky, '^([^|]*)|(%d+)$')
  if number and tonumber(at) + sticky_window > now and not held[number] and eligible(number) then
    chosen = number
  end
end
if not chosen then
  for level in string.gmatch(ARGV[8], '[^,]+') do
    chosen = walk(TAG .. 'l:' .. class .. ':' .. level)
    if chosen then break end
  end
end
if not chosen then return { 0, due } end

local meta = parse_meta(redis.call('HGET', nums, chosen))
local level = 'any'
local geos = ',' .. meta.geos .. ','
if area_tag ~= '' and string.find(geos, ',' .. area_tag .. ',', 1, true) then
  level = 'area_code'
elseif string.find(geos, ',' .. country_tag .. ',', 1, true) then
  level = 'country'
end

local held_until = expires + cooloff
redis.call('HSET', ua, chosen, format_route({ sid = skey, mode = class, open_until = expires,
  held_until = held_until, other = sealed_b }))
redis.call('HSET', ub, chosen, format_route({ sid = skey, mode = class, open_until = expires,
  held_until = held_until, other = sealed_a }))
push_expiry(ua, held_until)
push_expiry(ub, held_until)

local stamp = chosen .. '|' .. now
redis.call('HSET', ka, idx_b, stamp)
redis.call('HSET', kb, idx_a, stamp)
redis.call('PEXPIREAT', ka, now + sticky_window)
redis.call('PEXPIREAT', kb, now + sticky_window)

redis.call('HSET', s, 't', 'o', 'n', chosen, 'm', class, 'c', tonumber(ARGV[2]), 'e', expires,
  'h', held_until, 'co', cooloff, 'a', idx_a, 'b', idx_b, 'g', level)
put_blob(s, blob)
redis.call('ZADD', x, expires, skey)
if idem ~= '' then
  -- The record names its marker so erasing a participant removes it too.
  redis.call('HSET', s, 'i', idem)
  redis.call('SET', marker, skey .. '|' .. ARGV[24], 'PX', ARGV[25])
end

add_load(nums, chosen, 1)
if redis.call('HINCRBY', nums, chosen .. ':o', 1) == 1 then
  redis.call('HINCRBY', nums, '#busy', 1)
end
redis.call('HINCRBY', nums, '#open', 1)
-- pool.low fires once each time the share of numbers carrying an open session crosses the
-- threshold upwards; `#low` remembers that it fired until the share is below again.
if ARGV[20] and ARGV[20] ~= '' then
  local total = tonumber(redis.call('HGET', nums, '#total') or '0')
  local busy = tonumber(redis.call('HGET', nums, '#busy') or '0')
  local low = total > 0 and busy * 100 >= tonumber(ARGV[21]) * total
  local flagged = redis.call('HGET', nums, '#low') == '1'
  if low and not flagged then
    redis.call('HSET', nums, '#low', '1')
    put_event(ARGV[20], 'pool.low', fill(fill(ARGV[22], 'BUSY', busy), 'TOTAL', total), '', now)
  elseif not low and flagged then
    redis.call('HSET', nums, '#low', '0')
  end
end
put_event(ARGV[17], 'session.created', fill(ARGV[18] or '', 'PROXY', chosen), ARGV[19], now,
  { idx_a, idx_b })
return { 1, chosen, level, due }
