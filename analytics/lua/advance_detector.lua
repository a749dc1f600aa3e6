-- Advance one series' live anomaly detector over buckets that have closed:
-- its new state, the anomalies found, the alert states and notifications,
-- all or nothing (see analytics/anomaly/live.py).
--
-- KEYS[1]  the series' detector hash   (analytics:anomaly:{name}:r{res}:{sid})
-- KEYS[2]  the detector index          (analytics:anomaly:series)
-- KEYS[3]  the metric's anomalies      (analytics:anomalies:{name})
-- KEYS[4]  the alert outbox stream     (analytics:alerts:outbox)
-- ARGV[1]  the last scored bucket the worker read ("" when it found no state)
-- ARGV[2]  the new last scored bucket (epoch s)
-- ARGV[3]  the new detector state
-- ARGV[4]  the new alert states, or "" to leave them as they are
-- ARGV[5]  this series' member of the index, ARGV[6] now (epoch s), or ""
--          to take it off the index (an idle metric series: its next
--          sample puts it back)
-- ARGV[7]  anomalies older than this bucket start are dropped (retention)
-- ARGV[8]  live fan-out channel, or ""  (analytics:live:metrics)
-- ARGV[9]  number of anomalies A, then A times: bucket start, JSON
-- then     number of notifications N, then N JSON notifications
--
-- The worker computed all of it from the state it read. If the state has
-- moved since (another worker advanced the same buckets first), nothing is
-- written and 0 is returned: each bucket is scored exactly once, whichever
-- worker, redelivery or sweep gets there first. Otherwise returns 1.
local state, index, found, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local current = redis.call('HGET', state, 'last') or ''
if current ~= ARGV[1] then return 0 end
redis.call('HSET', state, 'last', ARGV[2], 'det', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', state, 'alerts', ARGV[4]) end
if ARGV[6] == '' then
  redis.call('ZREM', index, ARGV[5])
else
  redis.call('ZADD', index, ARGV[6], ARGV[5])
end
local live = {}
local pos = 10
for _ = 1, tonumber(ARGV[9]) do
  redis.call('ZADD', found, ARGV[pos], ARGV[pos + 1])
  live[#live + 1] = ARGV[pos + 1]
  pos = pos + 2
end
if #live > 0 then
  redis.call('ZREMRANGEBYSCORE', found, '-inf', '(' .. ARGV[7])
end
for _ = 1, tonumber(ARGV[pos]) do
  redis.call('XADD', outbox, '*', 'alert', ARGV[pos + 1])
  live[#live + 1] = ARGV[pos + 1]
  pos = pos + 1
end
if ARGV[8] ~= '' and #live > 0 then
  redis.call('PUBLISH', ARGV[8], '[' .. table.concat(live, ',') .. ']')
end
return 1
