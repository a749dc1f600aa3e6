-- Rollup helpers shared by commit_metrics.lua, commit_events.lua and
-- register_series.lua (prepended to them when loaded; see
-- analytics.lua_scripts.lua_source).
--
-- A rollup bucket is one field (its offset in the chunk, three digits) in two hashes:
--   chunk key          struct '<ddddd': count, sum, min, max, sum of squares
--   chunk key .. ':q'  quantile sketch bins, packed '<i4i8' (bin code, count)
--                      pairs (see analytics/metrics/sketch.py)
-- Merging adds counts, sums and bins and keeps the extreme min/max, so the
-- order in which batches arrive does not matter.

-- Numbers as JSON text: the shortest of %.15g / %.17g that reads back equal.
local function rollup_num(x)
  local text = string.format('%.15g', x)
  if tonumber(text) ~= x then text = string.format('%.17g', x) end
  return text
end

local function rollup_merge(key, off, c, s, mn, mx, sq, bins)
  local cur = redis.call('HGET', key, off)
  if cur then
    local c0, s0, mn0, mx0, sq0 = struct.unpack('<ddddd', cur)
    c, s, sq = c + c0, s + s0, sq + sq0
    if mn0 < mn then mn = mn0 end
    if mx0 > mx then mx = mx0 end
  end
  redis.call('HSET', key, off, struct.pack('<ddddd', c, s, mn, mx, sq))
  if bins ~= '' then
    local qkey = key .. ':q'
    local old = redis.call('HGET', qkey, off)
    if old then
      local counts, order = {}, {}
      local at, code, n = 1
      while at <= #old do
        code, n, at = struct.unpack('<i4i8', old, at)
        counts[code] = n
        order[#order + 1] = code
      end
      at = 1
      while at <= #bins do
        code, n, at = struct.unpack('<i4i8', bins, at)
        if counts[code] then
          counts[code] = counts[code] + n
        else
          counts[code] = n
          order[#order + 1] = code
        end
      end
      local parts = {}
      for i, k in ipairs(order) do parts[i] = struct.pack('<i4i8', k, counts[k]) end
      bins = table.concat(parts)
    end
    redis.call('HSET', qkey, off, bins)
  end
  return c, s, mn, mx
end

-- The live message of one finest-tier bucket after its update.
local function rollup_live(name_json, tags_json, bucket, c, s, mn, mx)
  return '{"name":' .. name_json .. ',"tags":' .. tags_json .. ',"bucket":' ..
    string.format('%d', bucket) .. ',"resolution":10,"count":' .. string.format('%d', c) ..
    ',"sum":' .. rollup_num(s) .. ',"min":' .. rollup_num(mn) .. ',"max":' .. rollup_num(mx) .. '}'
end

-- Register series `sid` (tags as JSON, and its "key:value" pairs) of one
-- metric; a new series is added to the tag index. Returns 1 if it was new.
local function rollup_register(registry, tagidx, sid, tags_json, pairs_)
  if redis.call('HSETNX', registry, sid, tags_json) == 0 then return 0 end
  for _, pair in ipairs(pairs_) do
    local ids = redis.call('HGET', tagidx, pair) or ''
    redis.call('HSET', tagidx, pair, ids .. sid)
  end
  return 1
end
