-- Release a lock, only if the caller still holds it (a lock that expired
-- and was taken by another caller meanwhile is left alone).
--
-- KEYS[1]  the lock                       (analytics:lock:cleanup)
-- ARGV[1]  the caller's token (the lock's value when it took the lock)
--
-- Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
