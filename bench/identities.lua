-- wrk script: every request carries one of many identities (and an id in the
-- path), so Vigil works its shared tables as it would under real traffic.
-- VIGIL_BENCH_IDENTITIES sets how many; VIGIL_BENCH_UNIQUE=1 makes every
-- request a new identity (the memory measurement).
local n = tonumber(os.getenv("VIGIL_BENCH_IDENTITIES") or "10000")
local unique = os.getenv("VIGIL_BENCH_UNIQUE") == "1"
local counter = 0
math.randomseed(os.time())

request = function()
  local id
  if unique then
    counter = counter + 1
    id = counter % n
  else
    id = math.random(1, n)
  end
  local headers = {["x-user-id"] = "bench-user-" .. id, ["user-agent"] = "wrk"}
  return wrk.format("GET", "/api/users/" .. math.random(1, 100000) .. "/orders", headers)
end
