-- The gateway's shared limits (gateway/src/limits/store.rs): one call checks every item
-- of a request and charges them only if all pass, on Redis's clock, in integer
-- microseconds (Lua numbers are doubles: exact below 2^53, and now is about 2^51).
--
-- KEYS[i]  item i's key.
-- ARGV     four numbers per item, in KEYS order:
--            GCRA  1, T = the emission interval in microseconds (>= 1), burst, want =
--                  the cells asked for (>= 1: 1 for a request, more for a lease; as
--                  many as fit are granted, at least 1 or the item refuses)
--            count 2, limit, the expiry (unix seconds, EXPIREAT), 1
-- Returns  {1, remaining_1, reset_1, granted_1, remaining_2, ...} when every item was
--          charged (GCRA: reset = microseconds until the bucket is full; count:
--          remaining = limit - count, reset 0, granted 1), else {0, index of the first
--          refusing item (0-based), microseconds until it admits one request (GCRA) or
--          until the count expires (count)}; nothing is written then.
-- A key listed twice sees its own earlier charge.

if redis.replicate_commands then
  redis.replicate_commands()  -- Redis < 7 only: TIME followed by writes
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local staged = {}   -- key -> its value once this call's earlier items are charged
local charge = {}   -- item -> new TAT (GCRA) or true (count)
local ahead = {}    -- item -> new TAT - now (GCRA)
local out = {1}

for i, key in ipairs(KEYS) do
  local kind = tonumber(ARGV[4 * i - 3])
  local a = tonumber(ARGV[4 * i - 2])
  local b = tonumber(ARGV[4 * i - 1])
  local current = staged[key]
  if current == nil then
    current = tonumber(redis.call('GET', key))
  end
  if kind == 1 then
    local tat = math.max(current or now, now)
    local span = b * a
    local room = math.floor((span - (tat - now)) / a)
    if room < 1 then
      return {0, i - 1, tat + a - now - span}
    end
    local grant = math.min(tonumber(ARGV[4 * i]), room)
    local new_tat = tat + grant * a
    local lead = new_tat - now
    staged[key] = new_tat
    charge[i] = new_tat
    ahead[i] = lead
    out[#out + 1] = math.floor((span - lead) / a)
    out[#out + 1] = lead
    out[#out + 1] = grant
  else
    local count = (current or 0) + 1
    if count > a then
      return {0, i - 1, math.max(b * 1000000 - now, 0)}
    end
    staged[key] = count
    charge[i] = true
    out[#out + 1] = a - count
    out[#out + 1] = 0
    out[#out + 1] = 1
  end
end

for i, key in ipairs(KEYS) do
  if charge[i] == true then
    redis.call('INCR', key)
    redis.call('EXPIREAT', key, ARGV[4 * i - 1])
  else
    local px = math.ceil(ahead[i] / 1000) + 1
    redis.call('SET', key, string.format('%d', charge[i]), 'PX', string.format('%d', px))
  end
end
return out
