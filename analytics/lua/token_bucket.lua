-- A per-key rate limit (analytics:rate:{key hash prefix}), on Redis's
-- clock so that every web process agrees. Put in front of the scripts that
-- take a token (lookup_key_take_token.lua, admit_events.lua).
--
-- A token bucket of ``burst`` tokens refilled at ``rate`` per second, kept
-- as one number (GCRA, the generic cell rate algorithm): the time, in
-- microseconds, at which the bucket will be full again. Taking ``cost``
-- tokens moves that time ``cost / rate`` seconds on, and is refused when
-- it would then lie more than ``burst / rate`` seconds ahead: the answers
-- of counting tokens, from one string key. A refused request writes
-- nothing. Times are whole microseconds (rounded up): a rate above a
-- million per second acts as a million.
--
-- The write is left out of the AOF and replication (``set_repl``): a
-- limit is soft state, and replicating it made Redis wrap every admitted
-- request's writes in MULTI/EXEC. After a restart or a failover every
-- bucket starts full. Redis refuses the write when full (``maxmemory``),
-- as any other.
--
-- take_tokens(bucket, rate, burst, cost, ttl_ms): ``ttl_ms`` at least
-- ``burst / rate`` seconds (the bucket is full by then and may go). Returns
-- allowed (1/0) and the milliseconds until enough tokens are back.
local function take_tokens(bucket, rate, burst, cost, ttl_ms)
  if rate <= 0 then return 1, 0 end
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local per_token = 1000000 / rate
  local full_at = math.max(tonumber(redis.call('GET', bucket)) or 0, now_us)
  local taken = math.ceil(full_at + cost * per_token)
  local over = taken - now_us - burst * per_token
  if over > 0 then return 0, math.ceil(over / 1000) end
  redis.set_repl(redis.REPL_NONE)
  -- '%d': a number argument would be formatted with '%.17g', which costs more.
  redis.call('SET', bucket, string.format('%d', taken), 'PX', ttl_ms)
  redis.set_repl(redis.REPL_ALL)
  return 1, 0
end
