-- A per-key token bucket (analytics:ratelimit:{key hash prefix}), on
-- Redis's clock so that every web process agrees. Included by the scripts
-- that take a token (ratelimit.py, admission.py).
--
-- take_tokens(bucket, rate, burst, cost): refill at ``rate`` tokens per
-- second up to ``burst``, take ``cost`` if there are that many. Returns
-- allowed (1/0) and the milliseconds until enough tokens are back. The
-- bucket is written (HSET) even when refused: its first write, so a script
-- calling it before any other write fails whole when Redis is full.
local function take_tokens(bucket, rate, burst, cost)
  if rate <= 0 then return 1, 0 end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local state = redis.call('HMGET', bucket, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local last = tonumber(state[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - last) * rate / 1000)
  local allowed, wait = 1, 0
  if tokens >= cost then
    tokens = tokens - cost
  else
    allowed = 0
    wait = math.ceil((cost - tokens) * 1000 / rate)
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)
  return allowed, wait
end
