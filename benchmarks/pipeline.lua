-- wrk script: send DEPTH requests at once on each keep-alive connection (HTTP pipelining).
local depth = tonumber(os.getenv("PIPELINE_DEPTH") or "8")

init = function(args)
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, "/")
   end
   req = table.concat(r)
end

request = function()
   return req
end
