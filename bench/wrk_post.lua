-- wrk script for bench/run.py.
--   wrk ... -s bench/wrk_post.lua URL -- BODY_FILE [MAX_REQUESTS] [AUTH]
-- BODY_FILE: the JSON body to POST ("-" for a plain GET). MAX_REQUESTS: stop this thread after that
-- many responses (0 = run for -d; use -t1, and the caller interrupts wrk when it prints BENCH_STOPPED).
-- AUTH: a bearer token. At the end it prints one line "BENCH_JSON {...}" with requests, duration,
-- latency percentiles (microseconds) and errors.
local max_requests = 0
local seen = 0

function init(args)
  local path = args[1]
  if path ~= nil and path ~= "-" then
    local f = assert(io.open(path, "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
  if args[2] ~= nil then max_requests = tonumber(args[2]) end
  if args[3] ~= nil and args[3] ~= "" then wrk.headers["Authorization"] = "Bearer " .. args[3] end
  if max_requests > 0 then
    response = function(status, headers, body)
      seen = seen + 1
      if seen == max_requests then
        -- wrk's main thread sleeps for the whole -d; bench/run.py sees this line and sends SIGINT
        io.write("BENCH_STOPPED\n")
        io.flush()
        wrk.thread:stop()
      end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, ' ..
    '"err_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
