-- Moves an interaction to a new status (from a provider's status callback, or from the
-- app's intercept verdict, which also becomes the answer retries of the request get).
-- KEYS: 1 ref key. ARGV: 1 tag, 2 status, 3 now ms, 4 duration secs or '', 5 final (1|0),
--       6 interaction.completed event id or '', 7 its body (`__SKEY__`, `__IID__`, `__KIND__`,
--       `__BY__`, `__SIDE__`, `__DURATION__` are filled in here), 8 verdict ('' none,
--       'c' allowed, 'b' blocked), 9 the block message, sealed, or ''
-- Returns 1 when an interaction changed, 0 when the reference is unknown.
local seen = redis.call('GET', KEYS[1])
if not seen then return 0 end
local action, sid, iid = string.match(seen, '^(%a)|([^|]*)|([^|]*)')
if not (action == 'c' or action == 'p' or action == 'b' or action == 'q') then return 0 end
-- Only the first verdict counts: the answer a retry gets never changes once given.
local verdict = ARGV[8] or ''
if verdict ~= '' and action == 'p' then
  local value = verdict .. '|' .. sid .. '|' .. iid
  if verdict == 'b' then value = value .. '|' .. (ARGV[9] or '') end
  redis.call('SET', KEYS[1], value, 'KEEPTTL')
end
-- A call the app started that ended before its bridge (unanswered, refused, or never
-- placed) connects nobody if a bridge comes after all.
if action == 'q' and ARGV[5] == '1' then
  redis.call('SET', KEYS[1], 'a||', 'KEEPTTL')
end
local ikey = TAG .. 'i:' .. sid
local rec = redis.call('HGET', ikey, iid)
if not rec then return 0 end
local kind, side, status, started, ended, duration, rest =
  string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
if not kind then return 0 end
-- A final status is final: a late, out-of-order callback does not reopen it.
if ended ~= '' then return 0 end
status = ARGV[2]
if ARGV[5] == '1' then
  ended = ARGV[3]
  if ARGV[4] ~= '' then duration = ARGV[4] end
end
redis.call('HSET', ikey, iid, table.concat({ kind, side, status, started, ended, duration, rest }, '|'))
if ARGV[5] == '1' then
  local body = ARGV[7] or ''
  body = fill(body, 'SKEY', sid)
  body = fill(body, 'IID', iid)
  -- Upper case: the app started it (see `interaction_code`).
  local k = string.sub(kind, 1, 1)
  body = fill(body, 'KIND', (k == 'v' or k == 'V') and 'voice' or 'sms')
  body = fill(body, 'BY', (k == 'V' or k == 'S') and 'app' or 'participant')
  body = fill(body, 'ACCESS', #kind == 2 and 'pin' or 'direct')
  body = fill(body, 'SIDE', side)
  body = fill(body, 'DURATION', duration ~= '' and duration or 'null')
  put_event(ARGV[6], 'interaction.completed', body, '', tonumber(ARGV[3]))
end
return 1
