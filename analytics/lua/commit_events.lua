-- Commit a batch of queue entries to the event store, atomically.
--
-- KEYS[1]  the queue lane (stream) the entries were read from
-- KEYS[2]  the dead-letter stream of events        (analytics:dlq:events)
-- KEYS[3]  erasure tombstones: owner hash -> erased at (ms) (analytics:erased)
-- ARGV[1]  consumer group
-- ARGV[2]  key prefix of the processed hashes   (analytics:events:processed:)
-- ARGV[3]  key prefix of the time indexes       (analytics:events:time:)
-- ARGV[4]  key prefix of the user indexes       (analytics:events:user:)
-- ARGV[5]  key prefix of the dedupe shards      (analytics:events:ids:)
-- ARGV[6]  key prefix of the open-page hashes   (analytics:events:pages:)
-- ARGV[7]  the stored-events counter            (analytics:events:count)
-- ARGV[8]  live fan-out channel, or ""          (analytics:live:events)
-- ARGV[9]  "1": acknowledge the entries (normal); "0": probe, store the
--          records without acknowledging (used to find a poison record)
-- ARGV[10] now, epoch seconds (the dead letters' "ts")
-- ARGV[11] page size limit, bytes
-- ARGV[12] page time bucket, ms
-- ARGV[13] number of entries E, then per entry: its stream id, its record
--          count C, its dead-letter count D, then C times: type, timestamp
--          ms, owner hash (the user hash, else the anonymous hash; see
--          analytics/records.py), dedupe shard, dedupe member, blob; then D
--          times: reason, attempts, payload field ("record" or "sealed"),
--          payload, owner hash
-- then     (optional, for the events.{type} count metrics) the rollup expiry
--          index, the live metrics channel or "", the key prefix of the
--          event metrics (analytics:metrics:events.), the series id of the
--          empty tag set, the number of tiers T, then per tier: resolution
--          (s), chunk length (s), retention (s)
--
-- Records are stored in *pages* (see analytics/store.py): a field of the
-- processed hash holding the blobs, one after another, of records of one
-- type whose timestamps fall in one time bucket. A record goes to the open
-- page of its (type, bucket) (the open-page hash: bucket -> page id) while
-- the page stays under the size limit, else to a new page "bucket.seq".
-- The time index scores each page by its newest timestamp, each user index
-- scores "type:page" by its owner's newest timestamp in it.
--
-- An entry is applied only if it is still in the group's pending list:
-- when two workers hold the same entry (one was presumed dead and its entry
-- claimed), only the first commit counts. That also makes setting records
-- aside exactly-once: they reach the dead-letter stream in the same step as
-- the acknowledgement, and only from the commit that acknowledges. Records
-- are deduplicated by id (a keyed hash of the messageId; shard and member
-- of the dedupe sets, passed as strings since Lua numbers are doubles) in
-- the same step. A record (or dead letter) of an erased owner that was
-- queued (entry id = XADD time) before the erasure is dropped, not stored.
--
-- Every argument and the type of every key written is checked before the
-- first write: Redis does not roll a script back when it fails half-way,
-- and appending to a page is not idempotent, so a bad record or key must
-- fail the script before anything is written. (A full Redis refuses the
-- first write of a script, never a later one.)
-- Returns {stored, duplicates, entries skipped because already committed,
-- records dead-lettered, records dropped because their owner was erased,
-- pages closed (full) by this commit: {type, page id, ...}}. The caller
-- compresses the closed pages (nothing is appended to them any more).
local lane, dlq, erased, group = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local processed, timeidx, useridx, idsprefix = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local openprefix, countkey, channel = ARGV[6], ARGV[7], ARGV[8]
local ack, now = ARGV[9] == '1', ARGV[10]
local limit, bucket_ms = tonumber(ARGV[11]), tonumber(ARGV[12])
local entries = tonumber(ARGV[13])
local FIRST, PER_RECORD = 14, 6

-- The entry headers first (the records are checked in phase 2, before
-- anything but a dedupe mark is written, and the marks are then taken back).
local pos = FIRST
for e = 1, entries do
  local count, dead = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  if count == nil or dead == nil or not string.match(ARGV[pos], '^%d+') then
    return redis.error_reply('invalid_record: bad entry header ' .. e)
  end
  pos = pos + 3 + PER_RECORD * count + 5 * dead
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

local function check_type(key, wanted)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted})
  end
end

-- Phase 1: the type of every key written, before any write.
pos = FIRST
local types_seen, users_seen = {}, {}
for _ = 1, entries do
  local count, dead = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  for _ = 1, count do
    local etype, user = ARGV[pos], ARGV[pos + 2]
    if not types_seen[etype] then
      types_seen[etype] = true
      check_type(processed .. etype, 'hash')
      check_type(timeidx .. etype, 'zset')
      check_type(openprefix .. etype, 'hash')
    end
    if user ~= '' and not users_seen[user] then
      users_seen[user] = true
      check_type(useridx .. user, 'zset')
    end
    pos = pos + PER_RECORD
  end
  pos = pos + 5 * dead
end
check_type(countkey, 'string')
check_type(dlq, 'stream')

-- Phase 2: check each record, then dedupe it. SADD both checks and marks
-- (one call per record); should a record be malformed, or an SADD meet a
-- damaged shard, the marks made so far are taken back before failing:
-- nothing written.
pos = FIRST
local stored, dups, skipped, buried, dropped = 0, 0, 0, 0, 0
-- Per record work is kept to table appends: no string building, no table
-- per record (the script's own Lua work costs more than its commands).
local acked, letters = {}, {}
local groups, group_order, mark_keys, mark_members = {}, {}, {}, {}
local users, user_order = {}, {}
local per_second, second_types = {}, {}  -- type -> {second -> events}, for the counts
local function unmark()
  for m = 1, #mark_keys do redis.call('SREM', mark_keys[m], mark_members[m]) end
end
for e = 1, entries do
  local entry, count, dead = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  local queued_ms = tonumber(string.match(entry, '^(%d+)'))
  -- Pending still? (Checked first, acknowledged last: should a write below
  -- fail, the entry stays pending and is retried, never half-acknowledged.)
  local live = #redis.call('XPENDING', lane, group, entry, entry, 1) == 1
  if not live then skipped = skipped + 1 end
  for r = 1, count do
    if live then
      local etype, ts, user = ARGV[pos], tonumber(ARGV[pos + 1]), ARGV[pos + 2]
      local blob = ARGV[pos + 5]
      if ts == nil or ts % 1 ~= 0 or etype == '' or ARGV[pos + 3] == ''
          or not string.match(ARGV[pos + 4], '^%-?%d+$') or blob == '' then
        unmark()
        return redis.error_reply('invalid_record: entry ' .. e .. ' record ' .. r)
      end
      local shard, member = idsprefix .. ARGV[pos + 3], ARGV[pos + 4]
      local added = 0
      if has_erased and erased_since(user, queued_ms) then
        dropped = dropped + 1
      else
        added = redis.pcall('SADD', shard, member)
        if type(added) == 'table' then
          unmark()
          return added
        end
        if added == 0 then dups = dups + 1 end
      end
      if added == 1 then
        mark_keys[#mark_keys + 1], mark_members[#mark_members + 1] = shard, member
        local bucket = ts - ts % bucket_ms
        local by_bucket = groups[etype]
        if not by_bucket then
          by_bucket = {}
          groups[etype] = by_bucket
        end
        local g = by_bucket[bucket]
        if not g then
          g = {etype = etype, bucket = tostring(bucket / bucket_ms), ts = {}, user = {}, blob = {}}
          by_bucket[bucket] = g
          group_order[#group_order + 1] = g
        end
        local n = #g.ts + 1
        g.ts[n], g.user[n], g.blob[n] = ts, user, blob
        stored = stored + 1
        local seconds = (ts - ts % 1000) / 1000
        local counts = per_second[etype]
        if not counts then
          counts = {}
          per_second[etype] = counts
          second_types[#second_types + 1] = etype
        end
        counts[seconds] = (counts[seconds] or 0) + 1
        if user ~= '' and not users[user] then
          users[user] = {}
          user_order[#user_order + 1] = user
        end
      end
    end
    pos = pos + PER_RECORD
  end
  for _ = 1, dead do
    if live and ack then
      if erased_since(ARGV[pos + 4], queued_ms) then
        dropped = dropped + 1
      else
        letters[#letters + 1] = pos
        buried = buried + 1
      end
    end
    pos = pos + 5
  end
  if live and ack then acked[#acked + 1] = entry end
end

-- The open page of each (type, bucket) and how full it is.
for _, g in ipairs(group_order) do
  g.page = redis.call('HGET', openprefix .. g.etype, g.bucket)
  g.size = g.page and redis.call('HSTRLEN', processed .. g.etype, g.page) or 0
end

-- Phase 3: writes. Gathered per key into multi-member commands: one
-- ZADD per type and user rather than several calls per record (each
-- redis.call costs about as much as the write itself).
local function chunked(cmd, key, args, head)
  for i = 1, #args, 1000 do
    if head then
      redis.call(cmd, key, head, unpack(args, i, math.min(i + 999, #args)))
    else
      redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
    end
  end
end

local scores, score_types, closed, fresh = {}, {}, {}, {}
local function write_page(g, page, parts, newest, was)
  local pages = processed .. g.etype
  -- Every string Lua makes is hashed over its whole length: concatenate
  -- only when there is something to append to ('' .. s copies s too).
  local data = table.concat(parts)
  local old = was > 0 and redis.call('HGET', pages, page) or ''
  redis.call('HSET', pages, page, old and old ~= '' and old .. data or data)
  fresh[#fresh + 1], fresh[#fresh + 2] = g.etype, data
  local s = scores[g.etype]
  if not s then
    s = {}
    scores[g.etype] = s
    score_types[#score_types + 1] = g.etype
  end
  s[#s + 1], s[#s + 2] = newest, page
end

for _, g in ipairs(group_order) do
  local page, size, was = g.page, g.size, g.size
  local member = page and g.etype .. ':' .. page
  local parts, newest = {}, 0
  local times, owners, blobs = g.ts, g.user, g.blob
  for r = 1, #times do
    local ts, user, blob = times[r], owners[r], blobs[r]
    if not page or (size > 0 and size + #blob > limit) then
      if page and #parts > 0 then write_page(g, page, parts, newest, was) end
      if page then closed[#closed + 1], closed[#closed + 2] = g.etype, page end
      local seq = redis.call('HINCRBY', openprefix .. g.etype, '#', 1)
      page = g.bucket .. '.' .. seq
      member = g.etype .. ':' .. page
      redis.call('HSET', openprefix .. g.etype, g.bucket, page)
      size, was, parts, newest = 0, 0, {}, 0
    end
    parts[#parts + 1] = blob
    size = size + #blob
    if ts > newest then newest = ts end
    if user ~= '' then
      local u = users[user]
      local seen = u[member]
      if not seen or seen < ts then u[member] = ts end
    end
  end
  if #parts > 0 then write_page(g, page, parts, newest, was) end
end
for _, etype in ipairs(score_types) do
  chunked('ZADD', timeidx .. etype, scores[etype], 'GT')
end
for _, user in ipairs(user_order) do
  local args = {}
  for member, ts in pairs(users[user]) do
    args[#args + 1], args[#args + 2] = ts, member
  end
  chunked('ZADD', useridx .. user, args, 'GT')
end
-- The acknowledgement last.
if stored > 0 then redis.call('INCRBY', countkey, stored) end
for _, at in ipairs(letters) do
  redis.call('XADD', dlq, '*', 'reason', ARGV[at], 'attempts', ARGV[at + 1], 'ts', now,
             ARGV[at + 2], ARGV[at + 3], 'user', ARGV[at + 4])
end
if #acked > 0 then
  redis.call('XACK', lane, group, unpack(acked))  -- at most one batch of entries
  chunked('XDEL', lane, acked)
end
if channel ~= '' and stored > 0 then
  -- msgpack array: type, blobs, type, blobs... (the records each page got,
  -- one after another: no string per record; page by page, each in order)
  redis.call('PUBLISH', channel, cmsgpack.pack(fresh))
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
  for _, etype in ipairs(second_types) do
    local seconds_seen = {}
    for seconds in pairs(per_second[etype]) do seconds_seen[#seconds_seen + 1] = seconds end
    table.sort(seconds_seen)
    for _, seconds in ipairs(seconds_seen) do
      local n = per_second[etype][seconds]
      for t, tier in ipairs(tiers) do
        local bucket = seconds - seconds % tier[1]
        local cell = etype .. '\0' .. t .. '\0' .. bucket
        if cells[cell] then
          cells[cell][4] = cells[cell][4] + n
        else
          cells[cell] = {etype, t, bucket, n}
          order[#order + 1] = cell
        end
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
return {stored, dups, skipped, buried, dropped, closed}
