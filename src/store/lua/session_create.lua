-- Claims a proxy number for a new session: both routes, the number's load and the session
-- record, in one step, or nothing (invariants 1 and 4).
-- KEYS: 1 nums, 2 xb (session buckets by next transition), 3 A's bucket, 4 B's bucket,
--       5 the session's bucket
-- ARGV: 1 tag, 2 created ms (as the caller reports it; checks use Redis's clock),
--       3 expires ms, 4 cool-off ms, 5 mode class (v|s|b), 6 idx A, 7 idx B,
--       8 geo levels to try in order ('a1415,c1,*'), 9 random, 10 session key,
--       11 sealed metadata or '', 12 the session's options or '' (`r`, `l<secs>`,
--       `d<secs>`, `w<idle deadline ms>`), 13 sealed session blob, 14 sticky window ms,
--       15 A's area tag or '', 16 A's country tag, 17 session.created event id or '',
--       18 its body (`__PROXY__` stands for the number chosen), 19 sealed numbers or '',
--       20 pool.low event id or '', 21 the pool's low threshold (percent), 22 its body
--       (`__BUSY__`, `__TOTAL__` stand for the shard's busy and total numbers),
--       23 idempotency digest or '', 24 request fingerprint, 25 marker ttl ms,
--       26 '1' to avoid the pair's last shared number while another is free,
--       27 the number asked for or '' (allocate one), 28 '1' for a PIN session: no routes, a
--       PIN for each side on a number the two may already hold (the least loaded, or the one
--       asked for), 29 the PIN length, 30 and 31 candidate PIN indexes for side 0 and side 1
--       (`,` between them, tried in order; see `pin_key`)

-- Returns {0, due, held} when no number is free, {1, number, level, due, held} on success
-- (held: the numbers the two already hold here; a PIN session adds the positions of the two
-- PINs taken among the candidates), {2, session key, fingerprint, due} when
-- this shard already holds the session of the idempotent request (a retry of a create whose
-- answer was lost), and {3, why, due} when the number asked for cannot be had: why is
-- 'missing' (not in this shard), 'capability', 'draining', 'held_a' or 'held_b' (that
-- participant holds it, open or cooling off).
local nums = KEYS[1]
-- Redis's clock, not the caller's: a request delayed on its way still sees time as it is.
local now = clock_ms()
local expires = tonumber(ARGV[3])
local cooloff = tonumber(ARGV[4])
local class = ARGV[5]
local idx_a, idx_b = ARGV[6], ARGV[7]
local rnd = tonumber(ARGV[9])
local skey = ARGV[10]
local blob = ARGV[13]
local sticky_window = tonumber(ARGV[14])
local area_tag, country_tag = ARGV[15], ARGV[16]

local due = #redis.call('ZRANGEBYSCORE', TAG .. 'xb', '-inf', now, 'LIMIT', 0, 1) > 0 and 1 or 0

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
-- free whatever the reaper's lag; such a record of these two is sticky memory already.
local ea, eb = get_entry(idx_a), get_entry(idx_b)
local held = {}
local nheld = 0
local sticky, sticky_at = nil, 0
for side, e in ipairs({ ea, eb }) do
  for number, sid in pairs(e.routes) do
    local rec = get_session(sid)
    if rec and rec.h > now then
      if not held[number] then
        held[number] = true
        nheld = nheld + 1
      end
    elseif rec and side == 1 and (rec.a == idx_b or rec.b == idx_b) and rec.h > sticky_at then
      sticky, sticky_at = number, rec.h
    end
  end
end
local short_b = string.sub(idx_b, 1, 8)
for _, st in ipairs(ea.stubs) do
  if st.other == short_b and st.at > sticky_at then sticky, sticky_at = st.number, st.at end
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

local use_pin = ARGV[28] == '1'
local chosen, meta = nil, nil
-- What the two hold between them, for the pool's capacity counts (before avoiding the
-- sticky number, which counts it as held only for the walk).
local held_count = nheld
local asked = ARGV[27] or ''
if asked ~= '' then
  -- The same checks allocation makes, in the same step as the claim, so a number asked for
  -- is refused exactly when allocation would have skipped it.
  local raw = redis.call('HGET', nums, asked)
  if not raw then return { 3, 'missing', due } end
  meta = parse_meta(raw)
  local capable = false
  for _, c in ipairs(classes(meta.caps)) do
    if c == class then capable = true end
  end
  if not capable then return { 3, 'capability', due } end
  if meta.state ~= 'active' then return { 3, 'draining', due } end
  if held[asked] and not use_pin then
    local sid = ea.routes[asked]
    local rec = sid and get_session(sid)
    return { 3, (rec and rec.h > now) and 'held_a' or 'held_b', due }
  end
  chosen = asked
elseif use_pin then
  -- A PIN session takes no route: any number of the class will do, the least loaded first.
  held, nheld = {}, 0
  for level in string.gmatch(ARGV[8], '[^,]+') do
    chosen = walk(TAG .. 'l:' .. class .. ':' .. level)
    if chosen then break end
  end
  if not chosen then return { 0, due, held_count } end
  meta = parse_meta(redis.call('HGET', nums, chosen))
else
  local fresh_sticky = sticky and sticky_at + sticky_window > now and not held[sticky]
  if fresh_sticky and ARGV[26] == '1' then
    -- Avoiding it: walk as if the pair held it (one more member read per segment), and come
    -- back to it only when nothing else is free.
    held[sticky] = true
    nheld = nheld + 1
  elseif fresh_sticky and eligible(sticky) then
    chosen = sticky
  end
  if not chosen then
    for level in string.gmatch(ARGV[8], '[^,]+') do
      chosen = walk(TAG .. 'l:' .. class .. ':' .. level)
      if chosen then break end
    end
  end
  if not chosen and fresh_sticky and ARGV[26] == '1' and eligible(sticky) then
    chosen = sticky
  end
  if not chosen then return { 0, due, held_count } end
  meta = parse_meta(redis.call('HGET', nums, chosen))
end

local level = 'any'
local geos = ',' .. meta.geos .. ','
if area_tag ~= '' and string.find(geos, ',' .. area_tag .. ',', 1, true) then
  level = 'area_code'
elseif string.find(geos, ',' .. country_tag .. ',', 1, true) then
  level = 'country'
end

local held_until = expires + cooloff
local options = ARGV[12]
local pin_at = {}
if use_pin then
  -- The first candidate of each side that no open or cooling-off PIN session of this number
  -- holds: a PIN past its session's hold is free whatever the reaper's lag.
  local pk = pin_key(chosen)
  local taken = {}
  for side, list in ipairs({ ARGV[30], ARGV[31] }) do
    local pos = 0
    for cand in string.gmatch(list, '[^,]+') do
      pos = pos + 1
      if not taken[cand] then
        local v = redis.call('HGET', pk, cand)
        local other = v and get_session(string.match(v, '^([^|]*)'))
        if not (other and other.h > now and pins_of(other)) then
          taken[cand], pin_at[side] = side, { cand, pos }
          break
        end
      end
    end
    if not pin_at[side] then return { 0, due, held_count } end
  end
  redis.call('HSET', pk, pin_at[1][1], skey .. '|0', pin_at[2][1], skey .. '|1')
  table.insert(ea.pins, { number = chosen, sid = skey })
  table.insert(eb.pins, { number = chosen, sid = skey })
  options = (options ~= '' and (options .. ',') or '')
    .. 'P' .. ARGV[29] .. '.' .. pin_at[1][1] .. '.' .. pin_at[2][1]
else
  -- A record of theirs on this number past its hold is replaced: that session let it go.
  ea.routes[chosen] = skey
  eb.routes[chosen] = skey
end
put_entry(idx_a, ea, now, sticky_window, held_until)
put_entry(idx_b, eb, now, sticky_window, held_until)

put_session(skey, { t = 'o', n = chosen, m = class, c = tonumber(ARGV[2]), e = expires,
  co = cooloff, a = idx_a, b = idx_b, g = level, i = idem, z = blob, o = options })
if ARGV[11] ~= '' then redis.call('SET', TAG .. 'y:' .. skey, ARGV[11]) end
local idle_until = tonumber(string.match(ARGV[12], 'w(%d+)'))
due_push(skey, (idle_until and idle_until < expires) and idle_until or expires)
if idem ~= '' then
  -- The record names its marker so erasing a participant removes it too.
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
put_event(ARGV[17], 'session.created',
  fill(fill(ARGV[18] or '', 'PROXY', chosen), 'ACCESS', use_pin and 'pin' or 'direct'), ARGV[19],
  now, { idx_a, idx_b })
if use_pin then
  return { 1, chosen, level, due, held_count, pin_at[1][2], pin_at[2][2] }
end
return { 1, chosen, level, due, held_count }
