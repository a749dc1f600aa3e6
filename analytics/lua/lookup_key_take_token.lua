-- Look an API key up by its hash and, when it exists, take tokens from its
-- rate limit: one round trip per authenticated request, and unknown keys
-- create no buckets. Needs token_bucket.lua in front (take_tokens).
--
-- KEYS[1]  API key records                (analytics:apikeys)
-- KEYS[2]  the key's rate limit           (analytics:rate:{prefix})
-- ARGV[1]  SHA-256 of the API key
-- ARGV[2]  rate (tokens/s, 0: no limit), ARGV[3] burst, ARGV[4] cost,
--          ARGV[5] the bucket's TTL (ms; take_tokens)
--
-- Returns {record or false, allowed (1/0), ms until enough tokens}. An
-- expired key (``expires``, epoch seconds, at or before Redis's clock) is
-- answered as unknown, as admit_events.lua refuses it: the same clock
-- decides on both paths, and it takes no token.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return {false, 1, 0} end
local expires = cjson.decode(record).expires
if type(expires) == 'number' and expires > 0 and expires <= tonumber(redis.call('TIME')[1]) then
  return {false, 1, 0}
end
local allowed, wait = take_tokens(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
return {record, allowed, wait}
