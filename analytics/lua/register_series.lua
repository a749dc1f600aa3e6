-- Register the series of one metric at ingest, under the cardinality limit.
--
-- KEYS[1]  the metric's series registry   (analytics:metrics:{name})
-- KEYS[2]  the metric's tag index         (analytics:metrics:tags:{name})
-- ARGV[1]  the limit of series per metric
-- ARGV[2]  number of series S, then per series: id, tags JSON, pair count P,
--          then P "key:value" pairs
--
-- Atomic, so concurrent requests cannot overshoot the limit. Returns the
-- ids of the series refused because the metric is full.
local registry, tagidx = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local pos = 3
local refused = {}
for _ = 1, tonumber(ARGV[2]) do
  local sid, tags_json, npairs = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  local pairs_ = {}
  for i = 1, npairs do pairs_[i] = ARGV[pos + 2 + i] end
  pos = pos + 3 + npairs
  if redis.call('HEXISTS', registry, sid) == 0 then
    if redis.call('HLEN', registry) >= limit then
      refused[#refused + 1] = sid
    else
      rollup_register(registry, tagidx, sid, tags_json, pairs_)
    end
  end
end
return refused
