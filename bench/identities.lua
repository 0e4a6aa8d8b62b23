-- wrk script: every request carries one of many identities (and an id in the
-- path), so Vigil works its shared tables as it would under real traffic.
-- VIGIL_BENCH_IDENTITIES sets how many; VIGIL_BENCH_UNIQUE=1 makes every
-- request a new identity (the memory measurement).
local n = tonumber(os.getenv("VIGIL_BENCH_IDENTITIES") or "10000")
local unique = os.getenv("VIGIL_BENCH_UNIQUE") == "1"
-- A share of requests (1% by default) comes from one busy identity, "bench-grey",
-- which sits near its rate ceiling where a configuration sets one (the ML cascade
-- bench): its local risk lands in the grey zone, so that share is what cascade asks about.
local grey = tonumber(os.getenv("VIGIL_BENCH_GREY_SHARE") or "0.01")
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
  local user = "bench-user-" .. id
  if not unique and math.random() < grey then
    user = "bench-grey"
  end
  local headers = {["x-user-id"] = user, ["user-agent"] = "wrk"}
  return wrk.format("GET", "/api/users/" .. math.random(1, 100000) .. "/orders", headers)
end
