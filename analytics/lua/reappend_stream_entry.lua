-- Replace a stream entry by a new one (same stream, a new id) if it still
-- exists with the expected value (compare-and-set). A stream entry cannot
-- be changed in place: the new entry is appended, the old one deleted.
--
-- KEYS[1]  the stream                     (analytics:dlq:{kind})
-- ARGV[1]  the entry's id
-- ARGV[2]  field name, ARGV[3] its expected value
-- ARGV[4..] the new entry's fields as name, value pairs
--
-- Returns 1 when re-appended; 0 when the entry is gone, lacks the field, or
-- the field holds another value.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == ARGV[2] then
    if fields[i + 1] ~= ARGV[3] then return 0 end
    local new = {}
    for j = 4, #ARGV do new[#new + 1] = ARGV[j] end
    redis.call('XADD', KEYS[1], '*', unpack(new))
    redis.call('XDEL', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
