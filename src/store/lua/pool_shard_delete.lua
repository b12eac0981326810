-- KEYS: 1 nums, 2 xb. ARGV: 1 tag.
-- Empties one shard of a pool being deleted, unless one of its numbers still holds a session
-- (open or cooling off): checking and emptying in one step means no session can be created
-- between them. The shard's numbers, load indexes, due order, events and the texts still
-- queued to go out from its numbers go (their sessions have ended and cooled off); `nums` stays
-- for a day as a tombstone (`#deleted`) so a number added by a request already under way
-- does not bring the shard back.
-- Returns {0} when a number holds a session, else {1, number, ...} (the numbers removed,
-- whose owner entries the caller deletes).
local nums, xb = KEYS[1], KEYS[2]
local all = redis.call('HGETALL', nums)
local numbers = {}
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, -2) == ':h' and tonumber(all[i + 1]) > 0 then return { 0 } end
  if string.sub(field, 1, 1) == '+' and not string.find(field, ':', 1, true) then
    table.insert(numbers, field)
  end
end
for _, number in ipairs(numbers) do
  for _, k in ipairs(load_keys(parse_meta(redis.call('HGET', nums, number)))) do
    redis.call('DEL', k)
  end
end
for _, id in ipairs(redis.call('ZRANGE', EV .. 'all', 0, -1)) do
  redis.call('DEL', EV .. 'm:' .. id)
end
for _, id in ipairs(redis.call('ZRANGE', TAG .. 'ox:q', 0, -1)) do
  redis.call('DEL', TAG .. 'ox:m:' .. id)
end
-- Participant buckets keep sticky memory after their routes end: none is left to anyone.
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
for i = 1, 64 do
  for j = 1, 64 do
    redis.call('DEL', TAG .. 'u:' .. string.sub(B64, i, i) .. string.sub(B64, j, j))
  end
end
redis.call('DEL', EV .. 'q', EV .. 'all', TAG .. 'ox:q', xb, nums)
redis.call('HSET', nums, '#deleted', 1)
redis.call('PEXPIRE', nums, 86400000)
table.insert(numbers, 1, 1)
return numbers
