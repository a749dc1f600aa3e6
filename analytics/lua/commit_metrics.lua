-- Apply the rollup deltas of a batch of metric queue entries, atomically
-- with their acknowledgement.
--
-- KEYS[1]  the metrics queue stream        (analytics:metrics:queue)
-- KEYS[2]  the metric dead-letter stream   (analytics:dlq:metrics)
-- ARGV[1]  consumer group
-- ARGV[2]  the rollup expiry index         (analytics:rollups:expiry)
-- ARGV[3]  live fan-out channel, or ""     (analytics:live:metrics)
-- ARGV[4]  number of entry ids N, then the N stream ids
-- then     number of series R, then per series: registry key, tag index key,
--          last-seen index key, id, tags JSON, its latest sample (epoch s),
--          pair count P, P "key:value" pairs
-- then     number of deltas D, then per delta: chunk key, bucket offset,
--          count, sum, min, max, sum of squares, sketch bins, expiry (epoch s),
--          then "" or, for a finest-tier bucket to announce live: name JSON,
--          tags JSON, bucket start (three values; "" takes one slot)
-- then     now, epoch seconds (the dead letters' "ts"), the number of dead
--          letters L, then per letter: reason, attempts, "record", the
--          record JSON, user hash ("")
--
-- The deltas were computed by the worker from exactly these entries. They
-- are applied only if every entry is still pending for the group: an entry
-- already acknowledged was counted by someone else (a worker presumed dead
-- that was not), so applying it again would double count. Then nothing is
-- written and the script returns {0, ids not pending}; the worker drops
-- those entries, recomputes and retries. Otherwise returns {1, D}. Records
-- the worker could not read are left out of the deltas and set aside here,
-- in the step that acknowledges their entry: dead-lettered once, or not at
-- all if the entry turns out to be someone else's.
local lane, dlq, group, expiry, channel = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local n = tonumber(ARGV[4])
local ids = {}
local missing = {}
for i = 1, n do
  local id = ARGV[4 + i]
  ids[i] = id
  local p = redis.call('XPENDING', lane, group, id, id, 1)
  if #p == 0 then missing[#missing + 1] = id end
end
if #missing > 0 then return {0, missing} end
-- Before any write: a script stopped by an error keeps what it wrote.
local found = redis.call('TYPE', dlq)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. dlq .. ' holds a ' .. found .. ', not a stream')
end
local pos = 5 + n
for _ = 1, tonumber(ARGV[pos]) do
  local registry, tagidx, seen, sid, tags_json, last, npairs = ARGV[pos + 1], ARGV[pos + 2],
    ARGV[pos + 3], ARGV[pos + 4], ARGV[pos + 5], ARGV[pos + 6], tonumber(ARGV[pos + 7])
  local pairs_ = {}
  for i = 1, npairs do pairs_[i] = ARGV[pos + 7 + i] end
  rollup_register(registry, tagidx, sid, tags_json, pairs_)
  redis.call('ZADD', seen, 'GT', last, sid)
  pos = pos + 7 + npairs
end
pos = pos + 1
local deltas = tonumber(ARGV[pos])
pos = pos + 1
local seen, live = {}, {}
for _ = 1, deltas do
  local key, off = ARGV[pos], ARGV[pos + 1]
  local c, s, mn, mx, sq = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), tonumber(ARGV[pos + 4]),
    tonumber(ARGV[pos + 5]), tonumber(ARGV[pos + 6])
  local bins, until_ = ARGV[pos + 7], ARGV[pos + 8]
  c, s, mn, mx = rollup_merge(key, off, c, s, mn, mx, sq, bins)
  if not seen[key] then
    seen[key] = true
    redis.call('ZADD', expiry, 'NX', until_, key)
  end
  if ARGV[pos + 9] == '' then
    pos = pos + 10
  else
    live[#live + 1] = rollup_live(ARGV[pos + 9], ARGV[pos + 10], tonumber(ARGV[pos + 11]), c, s, mn, mx)
    pos = pos + 12
  end
end
local now = ARGV[pos]
for _ = 1, tonumber(ARGV[pos + 1]) do
  redis.call('XADD', dlq, '*', 'reason', ARGV[pos + 2], 'attempts', ARGV[pos + 3], 'ts', now,
             ARGV[pos + 4], ARGV[pos + 5], 'user', ARGV[pos + 6])
  pos = pos + 5
end
-- In slices: unpack() is limited by Lua's C stack (about 8000 values).
for i = 1, n, 1000 do
  local j = math.min(n, i + 999)
  redis.call('XACK', lane, group, unpack(ids, i, j))
  redis.call('XDEL', lane, unpack(ids, i, j))
end
if channel ~= '' and #live > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(live, ',') .. ']')
end
return {1, deltas}
