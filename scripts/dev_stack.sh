#!/usr/bin/env bash
# Starts the whole local stack: a Consul dev agent, an EchoGen worker and the wrapper. Ctrl-C stops all.
# Ports: CONSUL_PORT (8500), WORKER_PORT (9001), WRAPPER_PORT (8000).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
py="$root/.venv/bin/python"
consul_bin="$("$root/scripts/install_consul.sh")"
consul_port="${CONSUL_PORT:-8500}"
worker_port="${WORKER_PORT:-9001}"
wrapper_port="${WRAPPER_PORT:-8000}"
export CONSUL_HTTP_ADDR="127.0.0.1:$consul_port"
logs="$root/.stack-logs"
mkdir -p "$logs"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stack stopped"
}
trap cleanup INT TERM EXIT

wait_for() {  # URL, what
  for _ in $(seq 1 100); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: $2 did not come up; see $logs" >&2
  exit 1
}

"$consul_bin" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level warn \
  -hcl "ports { http = $consul_port, dns = -1, grpc = -1 }" >"$logs/consul.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$consul_port/v1/status/leader" "Consul"

"$py" template_worker.py 127.0.0.1 "$worker_port" generators.echo.EchoGen >"$logs/worker.log" 2>&1 &
pids+=($!)
"$py" main_openai_wrapper_v2.py 127.0.0.1 "$wrapper_port" >"$logs/wrapper.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$wrapper_port/health" "the wrapper"
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$wrapper_port/v1/models" | grep -q '"echo"' && break
  sleep 0.1
done

base="http://127.0.0.1:$wrapper_port/v1"
cat <<EOT

The stack is up (logs in $logs):
  Consul UI/API  http://127.0.0.1:$consul_port
  EchoGen worker http://127.0.0.1:$worker_port  (model "echo")
  Wrapper        $base

Try it:
  curl -s $base/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "echo", "messages": [{"role": "user", "content": "Hello, gateway"}]}'

  .venv/bin/python -c 'from openai import OpenAI; c = OpenAI(base_url="$base", api_key="none"); print(c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Hello, gateway"}]).choices[0].message.content)'

Press Ctrl-C to stop.
EOT
wait -n "${pids[@]}"
echo "a process of the stack exited; see $logs" >&2
