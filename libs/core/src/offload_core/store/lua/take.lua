-- KEYS[1] unacked index, KEYS[2] unacked hash, KEYS[3..] the lists in BRPOP's order; ARGV most
-- messages, now. Returns {stopped, list, message, list, message, ...}; stopped is 1 when a
-- message without a readable delivery tag was met: it is put back, and BRPOP (kombu's own
-- handling) takes it next. The unacked entry is kombu's: [message, exchange, routing key].
local out = {0}
local most = tonumber(ARGV[1])
local taken = 0
for i = 3, #KEYS do
  while taken < most do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    local info = type(properties) == 'table' and properties['delivery_info']
    if type(tag) ~= 'string' or type(info) ~= 'table' then
      redis.call('RPUSH', KEYS[i], item)
      out[1] = 1
      return out
    end
    redis.call('ZADD', KEYS[1], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag,
               '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
    taken = taken + 1
  end
  if taken >= most then break end
end
return out
