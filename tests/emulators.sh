#!/usr/bin/env bash
# Starts the emulators the tests run against, exports their addresses, runs the given command,
# and stops the emulators whatever happens:
#   - Google's Firestore emulator (a JVM from the machine image) → FIRESTORE_EMULATOR_HOST
#   - gcloud-tasks-emulator (PyPI, in the repo's .venv)          → CLOUD_TASKS_EMULATOR_HOST
#   - oauth2-mock-server (npm, tests/oauth-interop), a third-party OAuth 2.0 server for the
#     KlaviyoOAuth interop test                                  → OAUTH_INTEROP_URL (+ _CLIENT_ID, _CLIENT_SECRET)
# Usage: tests/emulators.sh cargo nextest run --workspace
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="${VENV:-$root/.venv}"
jar="${FIRESTORE_EMULATOR_JAR:-/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar}"
logs="${EMULATOR_LOGS:-$root/target/emulators}"
mkdir -p "$logs"

if [ ! -f "$jar" ]; then
  echo "error: Firestore emulator jar not found at $jar" >&2
  echo "       install the Debian package google-cloud-cli-firestore-emulator (or set FIRESTORE_EMULATOR_JAR)" >&2
  exit 1
fi
command -v java >/dev/null || { echo "error: java (17+) is needed by the Firestore emulator" >&2; exit 1; }
if [ ! -x "$venv/bin/gcloud-tasks-emulator" ]; then
  echo "error: $venv/bin/gcloud-tasks-emulator missing: run 'make venv' first" >&2
  exit 1
fi
interop="$root/tests/oauth-interop"
command -v node >/dev/null || { echo "error: node is needed by the OAuth interop server (apt install nodejs npm)" >&2; exit 1; }
if [ ! -d "$interop/node_modules/oauth2-mock-server" ]; then
  echo "error: $interop/node_modules missing: run 'make oauth-interop' first" >&2
  exit 1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for_port() { # name port pid log
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "error: $1 exited during start; see $4" >&2; tail -20 "$4" >&2; return 1; fi
    sleep 0.1
  done
  echo "error: $1 did not open port $2 within 30 s; see $4" >&2
  return 1
}

pids=()
cleanup() { # the Firestore JVM can ignore SIGTERM for seconds: ask, wait briefly, then insist
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 20); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

fs_port=$(free_port)
java -Duser.language=en -cp "$jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore \
  start --host=127.0.0.1 --port="$fs_port" >"$logs/firestore.log" 2>&1 &
pids+=($!)
fs_pid=$!

tasks_port=$(free_port)
"$venv/bin/gcloud-tasks-emulator" start --port="$tasks_port" --max-retries=5 >"$logs/cloud-tasks.log" 2>&1 &
pids+=($!)
tasks_pid=$!

export OAUTH_INTEROP_CLIENT_ID=interop-client
export OAUTH_INTEROP_CLIENT_SECRET=interop-secret
interop_port=$(free_port)
PORT="$interop_port" node "$interop/server.mjs" >"$logs/oauth-interop.log" 2>&1 &
pids+=($!)
interop_pid=$!

wait_for_port "Firestore emulator" "$fs_port" "$fs_pid" "$logs/firestore.log"
wait_for_port "Cloud Tasks emulator" "$tasks_port" "$tasks_pid" "$logs/cloud-tasks.log"
wait_for_port "OAuth interop server" "$interop_port" "$interop_pid" "$logs/oauth-interop.log"
export FIRESTORE_EMULATOR_HOST="127.0.0.1:$fs_port"
export CLOUD_TASKS_EMULATOR_HOST="127.0.0.1:$tasks_port"
export OAUTH_INTEROP_URL="http://127.0.0.1:$interop_port"
echo "emulators: Firestore $FIRESTORE_EMULATOR_HOST, Cloud Tasks $CLOUD_TASKS_EMULATOR_HOST, OAuth interop $OAUTH_INTEROP_URL (logs in $logs)" >&2

"$@"
