-- Forget series of one metric whose newest sample is older than the cutoff
-- (all their rollups have expired): registry entry, tag index entries and
-- last-seen entry, so they stop counting against the cardinality limit.
--
-- KEYS[1]  the metric's series registry   (analytics:metrics:{name})
-- KEYS[2]  the metric's tag index         (analytics:metrics:tags:{name})
-- KEYS[3]  the metric's last-seen index   (analytics:metrics:{name}:seen)
-- ARGV[1]  cutoff (epoch s)
-- ARGV[2]  the metric's live detector key prefix (analytics:anomaly:{name}:r)
-- ARGV[3]  the live detector index (analytics:anomaly:series), ARGV[4] the
--          metric's name, then the candidate series ids
--
-- A forgotten series' live detectors go with it (every resolution).
--
-- The score is read again here: a sample committed since the candidates
-- were listed keeps its series. Returns the number of series forgotten.
local registry, tagidx, seen = KEYS[1], KEYS[2], KEYS[3]
local cutoff = tonumber(ARGV[1])
local detectors, index, name = ARGV[2], ARGV[3], ARGV[4]
local dropped = 0
for i = 5, #ARGV do
  local sid = ARGV[i]
  local score = redis.call('ZSCORE', seen, sid)
  if score and tonumber(score) <= cutoff then
    local tags = redis.call('HGET', registry, sid)
    if tags then
      for k, v in pairs(cjson.decode(tags)) do
        local field = k .. ':' .. v
        local ids = redis.call('HGET', tagidx, field)
        if ids then
          local kept = {}
          for j = 1, #ids, 12 do
            local one = string.sub(ids, j, j + 11)
            if one ~= sid then kept[#kept + 1] = one end
          end
          if #kept == 0 then
            redis.call('HDEL', tagidx, field)
          else
            redis.call('HSET', tagidx, field, table.concat(kept))
          end
        end
      end
      redis.call('HDEL', registry, sid)
    end
    redis.call('ZREM', seen, sid)
    redis.call('DEL', detectors .. '10:' .. sid, detectors .. '60:' .. sid)
    redis.call('ZREM', index, cjson.encode({name, sid}))
    dropped = dropped + 1
  end
end
return dropped
