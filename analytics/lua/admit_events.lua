-- Admit an ingest request and queue what it brings: one round trip.
--
-- KEYS[1]  API key records                (analytics:apikeys)
-- KEYS[2]  the key's rate limit           (analytics:rate:{prefix})
-- KEYS[3]  the "processing task queued" flag (analytics:kick:events)
-- KEYS[4..] the streams to write, one entry each (a stream may repeat:
--          several dead letters of one request)
-- ARGV[1]  SHA-256 of the API key
-- ARGV[2]  rate (tokens/s, 0: no limit), ARGV[3] burst, ARGV[4] cost,
--          ARGV[5] the bucket's TTL (ms; take_tokens)
-- ARGV[6]  the roles that grant the action, space-separated with a space
--          at both ends (" ingest admin ")
-- ARGV[7]  TTL of the kick flag (ms); 0: leave the flag alone (nothing
--          for a worker: dead letters only)
-- then     per entry, in KEYS order: pair count P, then P field/value pairs
--          of its entry, written as given (EventQueue.fields builds them)
--
-- The checks run in the order of the two-trip path (lookup, token, revoked,
-- rate, role), and only an admitted request writes an entry. Returns
-- {verdict, key record or false, ms until a token is back, kicked (1/0),
-- the ids of the entries added (in KEYS order)};
-- verdict: 0 unknown key, 1 queued, 2 revoked (or expired: ``expires``,
-- epoch seconds, at or before Redis's clock), 3 rate limited, 4 role.
--
-- All entries or none: the script declares itself (#!lua, admission.py),
-- so when maxmemory is reached Redis refuses it whole before it runs, and
-- once it runs none of its writes is refused.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {0, false, 0, 0, {}} end
local allowed, wait = take_tokens(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
local key = cjson.decode(record)
if key.revoked and key.revoked ~= 0 then return {2, record, 0, 0, {}} end
-- TIME only for a key that expires: most do not, and they pay nothing.
if type(key.expires) == 'number' and key.expires > 0 and key.expires <= tonumber(redis.call('TIME')[1]) then
  return {2, record, 0, 0, {}}
end
if allowed == 0 then return {3, record, wait, 0, {}} end
if type(key.role) ~= 'string' or not string.find(ARGV[6], ' ' .. key.role .. ' ', 1, true) then
  return {4, record, 0, 0, {}}
end
local pos = 8
local ids = {}
for entry = 4, #KEYS do
  local n = tonumber(ARGV[pos])
  ids[entry - 3] = redis.call('XADD', KEYS[entry], '*', unpack(ARGV, pos + 1, pos + 2 * n))
  pos = pos + 1 + 2 * n
end
local kicked = false
if ARGV[7] ~= '0' then kicked = redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[7]) end
return {1, record, 0, kicked and 1 or 0, ids}
