-- Extend a lock's life, only if the caller still holds it.
--
-- KEYS[1]  the lock                       (analytics:lock:cleanup)
-- ARGV[1]  the caller's token (the lock's value when it took the lock)
-- ARGV[2]  the new time to live, ms
--
-- Returns 1 when extended, 0 when the lock expired or another caller holds
-- it now.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
