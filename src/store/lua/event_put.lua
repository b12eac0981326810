-- Records an event that accompanies no other change (a pool that ran out of numbers).
-- KEYS: 1 the shard's event queue. ARGV: 1 tag, 2 id, 3 type, 4 body, 5 sealed numbers, 6 now
put_event(ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
return 1
