-- Replay a dead letter: delete it, and only if this call deleted it, queue
-- its record again: a replay racing another cannot queue the record twice.
--
-- KEYS[1]  the dead-letter stream         (analytics:dlq:{kind})
-- KEYS[2]  the queue lane to queue the record on
-- ARGV[1]  the dead letter's id, then the queue entry's fields (name,
--          value...)
--
-- Returns 1 when queued, 0 when another replay took the dead letter first.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
