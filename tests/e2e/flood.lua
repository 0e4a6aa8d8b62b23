-- wrk script for the identity floods: every request carries an identity never
-- seen before ("flood-<thread>-<n>"), so Vigil's tables face a cardinality attack.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("GET", "/direct/items/" .. counter, {["x-user-id"] = "flood-" .. tostring(tid) .. "-" .. counter})
end
