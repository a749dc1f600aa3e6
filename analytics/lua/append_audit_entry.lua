-- Append an entry to the hash-chained audit log and advance the chain head
-- in the same step, only if the head is still the previous mac the caller
-- saw: a racing writer retries with the new head instead of forking the
-- chain. The mac is computed by the caller (the HMAC key never reaches
-- Redis).
--
-- KEYS[1]  the audit stream               (analytics:audit)
-- KEYS[2]  the chain head: the last mac   (analytics:audit:head)
-- ARGV[1]  the previous mac the caller saw ("" for the first entry)
-- ARGV[2]  the entry's data (JSON)
-- ARGV[3]  the entry's mac
--
-- Returns {1, the new entry's id}, or {0, the current head} when the head
-- moved on.
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return {0, head} end
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[2], 'prev', ARGV[1], 'mac', ARGV[3])
redis.call('SET', KEYS[2], ARGV[3])
return {1, id}
