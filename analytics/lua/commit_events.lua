-- Commit a batch of queue entries to the event store, atomically.
--
-- KEYS[1]  the queue lane (stream) the entries were read from
-- KEYS[2]  the dead-letter stream of events        (analytics:dlq:events)
-- KEYS[3]  erasure tombstones: user hash -> erased at (ms) (analytics:erased)
-- ARGV[1]  consumer group
-- ARGV[2]  key prefix of the processed hashes   (analytics:events:processed:)
-- ARGV[3]  key prefix of the time indexes       (analytics:events:time:)
-- ARGV[4]  key prefix of the user indexes       (analytics:events:user:)
-- ARGV[5]  the dedupe index                     (analytics:events:ids)
-- ARGV[6]  live fan-out channel, or ""          (analytics:live:events)
-- ARGV[7]  "1": acknowledge the entries (normal); "0": probe, store the
--          records without acknowledging (used to find a poison record)
-- ARGV[8]  now, epoch seconds (the dead letters' "ts")
-- ARGV[9]  number of entries E, then per entry: its stream id, its record
--          count C, its dead-letter count D, then C times: type, id,
--          timestamp ms, user hash, record; then D times: reason, attempts,
--          payload field ("record" or "sealed"), payload, user hash
-- then     (optional, for the events.{type} count metrics) the rollup expiry
--          index, the live metrics channel or "", the key prefix of the
--          event metrics (analytics:metrics:events.), the series id of the
--          empty tag set, the number of tiers T, then per tier: resolution
--          (s), chunk length (s), retention (s)
--
-- An entry is applied only if it is still in the group's pending list:
-- when two workers hold the same entry (one was presumed dead and its entry
-- claimed), only the first commit counts. That also makes setting records
-- aside exactly-once: they reach the dead-letter stream in the same step as
-- the acknowledgement, and only from the commit that acknowledges. Records
-- are deduplicated by id (a keyed hash of the messageId) in the same step.
-- A record (or dead letter) of an erased user that was queued (entry id =
-- XADD time) before the erasure is dropped, not stored.
--
-- Every argument is checked before the first write: Redis does not roll a
-- script back when it fails half-way, so a bad record must fail it early.
-- Returns {stored, duplicates, entries skipped because already committed,
-- records dead-lettered, records dropped because their user was erased}.
local lane, dlq, erased, group = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local processed, timeidx, useridx, ids, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ack, now = ARGV[7] == '1', ARGV[8]
local entries = tonumber(ARGV[9])

local pos = 10
for e = 1, entries do
  local count, dead = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  if count == nil or dead == nil or not string.match(ARGV[pos], '^%d+') then
    return redis.error_reply('invalid_record: bad entry header ' .. e)
  end
  pos = pos + 3
  for r = 1, count do
    if tonumber(ARGV[pos + 2]) == nil or ARGV[pos] == '' or ARGV[pos + 1] == '' then
      return redis.error_reply('invalid_record: entry ' .. e .. ' record ' .. r)
    end
    pos = pos + 5
  end
  pos = pos + 5 * dead
end

-- Erasure tombstones are rare: look them up only when any exist, once per user.
local has_erased = redis.call('EXISTS', erased) == 1
local erased_at = {}
local function erased_since(user, queued_ms)
  if not has_erased or user == '' then return false end
  local at = erased_at[user]
  if at == nil then
    at = tonumber(redis.call('HGET', erased, user)) or false
    erased_at[user] = at
  end
  return at and queued_ms <= at
end

-- Writes are gathered per key and sent as multi-member commands at the end:
-- one HSET/ZADD per type and user rather than several calls per record
-- (each redis.call costs about as much as the write itself).
local function chunked(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end

pos = 10
local stored, dups, skipped, buried, dropped = 0, 0, 0, 0, 0
local fresh, counted, seen, acked = {}, {}, {}, {}
local records, times, types = {}, {}, {}
local users, user_order, marks = {}, {}, {}
for _ = 1, entries do
  local entry, count, dead = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  local queued_ms = tonumber(string.match(entry, '^(%d+)'))
  -- Pending still? (Checked first, acknowledged last: should a write below
  -- fail, the entry stays pending and is retried, never half-acknowledged.)
  local live = #redis.call('XPENDING', lane, group, entry, entry, 1) == 1
  if not live then skipped = skipped + 1 end
  for _ = 1, count do
    if live then
      local etype, id, ts, user, record = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4]
      if erased_since(user, queued_ms) then
        dropped = dropped + 1
      elseif not seen[id] and redis.call('HEXISTS', ids, id) == 0 then
        seen[id] = true
        if not records[etype] then
          records[etype], times[etype] = {}, {}
          types[#types + 1] = etype
        end
        local r, t = records[etype], times[etype]
        r[#r + 1], r[#r + 2] = id, record
        t[#t + 1], t[#t + 2] = ts, id
        if user ~= '' then
          if not users[user] then
            users[user] = {}
            user_order[#user_order + 1] = user
          end
          local u = users[user]
          u[#u + 1], u[#u + 2] = ts, etype .. ':' .. id
        end
        marks[#marks + 1], marks[#marks + 2] = id, etype
        stored = stored + 1
        fresh[stored] = record
        counted[stored] = {etype, tonumber(ts)}
      else
        dups = dups + 1
      end
    end
    pos = pos + 5
  end
  for _ = 1, dead do
    if live and ack then
      if erased_since(ARGV[pos + 4], queued_ms) then
        dropped = dropped + 1
      else
        redis.call('XADD', dlq, '*', 'reason', ARGV[pos], 'attempts', ARGV[pos + 1], 'ts', now,
                   ARGV[pos + 2], ARGV[pos + 3], 'user', ARGV[pos + 4])
        buried = buried + 1
      end
    end
    pos = pos + 5
  end
  if live and ack then acked[#acked + 1] = entry end
end
for _, etype in ipairs(types) do
  chunked('HSET', processed .. etype, records[etype])
  chunked('ZADD', timeidx .. etype, times[etype])
end
for _, user in ipairs(user_order) do
  chunked('ZADD', useridx .. user, users[user])
end
-- The dedupe marks are written after the records, and the acknowledgement
-- last: a failure half-way leaves records unmarked and entries pending, and
-- their retry writes the same values again.
chunked('HSET', ids, marks)
if #acked > 0 then
  redis.call('XACK', lane, group, unpack(acked))  -- at most one batch of entries
  chunked('XDEL', lane, acked)
end
if channel ~= '' and stored > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(fresh, ',') .. ']')
end
-- Count the newly stored events per type in every rollup tier: the metric
-- "events.{type}" (each event a sample of value 1, so every aggregate is
-- right). Counted in a table first: one merge per (type, tier, bucket).
if ARGV[pos] and stored > 0 then
  local expiry, mchannel, mprefix, sid = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local tiers = {}
  for t = 1, tonumber(ARGV[pos + 4]) do
    local at = pos + 2 + 3 * t
    tiers[t] = {tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])}
  end
  local cells, order = {}, {}
  for _, item in ipairs(counted) do
    local etype, seconds = item[1], math.floor(item[2] / 1000)
    for t, tier in ipairs(tiers) do
      local bucket = seconds - seconds % tier[1]
      local cell = etype .. '\0' .. t .. '\0' .. bucket
      if cells[cell] then
        cells[cell][4] = cells[cell][4] + 1
      else
        cells[cell] = {etype, t, bucket, 1}
        order[#order + 1] = cell
      end
    end
  end
  local live = {}
  for _, cell in ipairs(order) do
    local etype, t, bucket, n = unpack(cells[cell])
    local res, chunk_len, keep = tiers[t][1], tiers[t][2], tiers[t][3]
    local chunk = bucket - bucket % chunk_len
    local key = mprefix .. etype .. ':r' .. res .. ':' .. sid .. ':' .. chunk
    local c, s, mn, mx = rollup_merge(key, string.format('%03d', (bucket - chunk) / res), n, n, 1, 1, n,
      struct.pack('<i4i8', 0, n))  -- bin code 0 holds the value 1
    redis.call('ZADD', expiry, 'NX', chunk + chunk_len + keep, key)
    if t == 1 then
      live[#live + 1] = rollup_live(cjson.encode('events.' .. etype), '{}', bucket, c, s, mn, mx)
    end
  end
  if mchannel ~= '' and #live > 0 then
    redis.call('PUBLISH', mchannel, '[' .. table.concat(live, ',') .. ']')
  end
end
return {stored, dups, skipped, buried, dropped}
