-- Replace a queue entry that no worker has been given yet by a new one
-- (same stream, a new id), if it still holds the expected value
-- (compare-and-set). Entries delivered to the consumer group (pending in a
-- worker's hands, or acknowledged) are left alone: re-appending one would
-- store its records twice or pull it from under the worker that holds it.
-- Undelivered means: newer than the group's last-delivered-id (XREADGROUP
-- with ">" gives only those); with no group yet, every entry is.
--
-- KEYS[1]  the queue stream                (analytics:events:queue[:priority])
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry's id
-- ARGV[3]  field name, ARGV[4] its expected value
-- ARGV[5..] the new entry's fields as name, value pairs
--
-- Returns 1 when re-appended; 0 when the entry is gone or changed; -1 when
-- it was delivered already (left to drain).
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #found == 0 then return 0 end

local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, group in ipairs(groups) do
    local name, last
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    if name == ARGV[1] and last then
      local ms, seq = parse(ARGV[2])
      local last_ms, last_seq = parse(last)
      if ms < last_ms or (ms == last_ms and seq <= last_seq) then return -1 end
    end
  end
end

local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == ARGV[3] then
    if fields[i + 1] ~= ARGV[4] then return 0 end
    local new = {}
    for j = 5, #ARGV do new[#new + 1] = ARGV[j] end
    redis.call('XADD', KEYS[1], '*', unpack(new))
    redis.call('XDEL', KEYS[1], ARGV[2])
    return 1
  end
end
return 0
