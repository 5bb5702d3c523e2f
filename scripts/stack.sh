#!/usr/bin/env bash
# The docker-compose stack without Docker: the same services, as plain processes on this machine.
#
#   scripts/stack.sh up [--dir D]       start what is not running yet (idempotent), then wait for it
#   scripts/stack.sh down [--dir D]     stop every process and remove the stack's folder
#   scripts/stack.sh status [--dir D]   what runs where; exit status 3 when something is down
#   scripts/stack.sh env [--dir D]      the services' environment as shell exports:
#                                       eval "$(scripts/stack.sh env)" points airflow/lookalike at it
#
# What runs (everything on 127.0.0.1, everything under one folder, D):
#   PostgreSQL and Redis (Debian's packages: apt-get install postgresql redis-server), the
#   OpenSearch node of scripts/opensearch.sh, Airflow 3 on PostgreSQL with the CeleryExecutor
#   (api-server, scheduler, dag-processor, triggerer) and Celery workers on Redis, each with its
#   own name, and `lookalike serve`. Airflow reaches OpenSearch through the OpenSearch
#   provider's connection `opensearch_default`, as in docker-compose.yml.
#
# Settings come from the same file docker-compose.yml reads, with the same names: .env, or
# .env.example where there is no .env (its secrets are placeholders: fine on loopback only).
# As with docker compose, a variable already in the environment wins over the file. Used:
# POSTGRES_PASSWORD, REDIS_PASSWORD, AIRFLOW_ADMIN_PASSWORD, AIRFLOW_JWT_SECRET, AIRFLOW_FERNET_KEY
# (generated for the stack's lifetime when empty), OPENSEARCH_HEAP, LOOKALIKE_LIBRARY (relative
# to the repository; filled with the sample library if it does not exist), LOOKALIKE_MODEL.
# OPENSEARCH_INITIAL_ADMIN_PASSWORD is not used: the node from Maven Central has no security
# plugin.
#
# This script's own settings (environment):
#   LOOKALIKE_STACK_DIR           the folder (${TMPDIR:-/tmp}/lookalike-stack-$UID); --dir wins
#   LOOKALIKE_ENV_FILE            the settings file (.env, else .env.example)
#   LOOKALIKE_STACK_AIRFLOW_PORT  Airflow UI and REST API (8080; 0: any free port)
#   LOOKALIKE_STACK_API_PORT      the search API and page (8000; 0: any free port)
#   LOOKALIKE_STACK_WORKERS       Celery workers (2), named worker-1, worker-2, ...
#   LOOKALIKE_STACK_USER          the unprivileged user PostgreSQL and Redis run as when the caller
#                                 is root (lookalike-stack, created if missing; PostgreSQL refuses
#                                 root). Airflow and the API run as the caller, in its .venv.
# Other AIRFLOW__* and LOOKALIKE_* variables in the environment reach the services unchanged,
# e.g. AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT or LOOKALIKE_AIRFLOW_RETRY_DELAY_S.
set -euo pipefail
CALLER_DIR="$PWD"  # where relative --dir and LOOKALIKE_ENV_FILE paths start
cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="$REPO/.venv"

log() { echo "stack.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd="${1:-}"; [ -n "$cmd" ] || usage; shift
STACK="${LOOKALIKE_STACK_DIR:-${TMPDIR:-/tmp}/lookalike-stack-$(id -u)}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) STACK="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$STACK" in /*) ;; *) STACK="$CALLER_DIR/$STACK" ;; esac
MARKER="$STACK/.lookalike-stack"
RUN="$STACK/run"
LOGS="$STACK/logs"
STATE="$STACK/stack.env"
WORKERS="${LOOKALIKE_STACK_WORKERS:-2}"
[[ "$WORKERS" =~ ^[1-9][0-9]?$ ]] || die "LOOKALIKE_STACK_WORKERS must be 1 to 99"

# -- settings: the compose file's .env ------------------------------------------------------------
load_env_file() {  # KEY=VALUE lines as docker compose reads them; the environment wins
  local file="$1" line key value
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    case "$line" in ''|'#'*) continue ;; esac
    [[ "$line" == *=* ]] || die "$file: not KEY=VALUE: $line"
    key="${line%%=*}"; value="${line#*=}"
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$file: bad variable name: $key"
    if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    if [ -z "${!key+x}" ]; then printf -v "$key" '%s' "$value"; fi
  done < "$file"
}

SETTINGS_READ=0
read_settings() {  # once per invocation (status after up would read and announce them again)
  [ "$SETTINGS_READ" -eq 0 ] || return 0
  SETTINGS_READ=1
  local file="${LOOKALIKE_ENV_FILE:-}"
  case "$file" in ''|/*) ;; *) file="$CALLER_DIR/$file" ;; esac
  if [ -z "$file" ]; then
    file=.env
    if [ ! -f .env ]; then
      file=.env.example
      log "no .env: using .env.example's placeholder secrets (loopback only; cp .env.example .env to set your own)"
    fi
  fi
  [ -f "$file" ] || die "settings file $file not found"
  load_env_file "$file"
  local required
  for required in POSTGRES_PASSWORD REDIS_PASSWORD AIRFLOW_ADMIN_PASSWORD AIRFLOW_JWT_SECRET; do
    [ -n "${!required:-}" ] || die "$required is empty: set it in $file (see .env.example)"
  done
  OPENSEARCH_HEAP="${OPENSEARCH_HEAP:-1g}"
  LOOKALIKE_MODEL="${LOOKALIKE_MODEL:-mobilenet_v2-imagenet}"
  LIBRARY="${LOOKALIKE_LIBRARY:-./library}"
  case "$LIBRARY" in /*) ;; *) LIBRARY="$REPO/${LIBRARY#./}" ;; esac
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_free() {
  python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

choose_port() {  # a port the user asked for (0: any free one), or a free one
  local wanted="${1:-0}" what="$2" variable="$3"
  if [ "$wanted" = 0 ]; then free_port; return; fi
  port_free "$wanted" || die "port $wanted ($what) is in use: set $variable to another port (0: any free one)"
  echo "$wanted"
}

# Ports and generated secrets are chosen once and kept in $STATE, so `up` after a partial stop
# (or a killed worker) brings back the same stack.
load_state() {
  if [ -f "$STATE" ]; then
    # shellcheck source=/dev/null
    . "$STATE"
    return
  fi
  AIRFLOW_PORT="$(choose_port "${LOOKALIKE_STACK_AIRFLOW_PORT:-8080}" "Airflow" LOOKALIKE_STACK_AIRFLOW_PORT)"
  API_PORT="$(choose_port "${LOOKALIKE_STACK_API_PORT:-8000}" "search API" LOOKALIKE_STACK_API_PORT)"
  PG_PORT="$(free_port)" REDIS_PORT="$(free_port)" OPENSEARCH_PORT="$(free_port)" HEALTH_PORT="$(free_port)"
  GENERATED_FERNET_KEY=""
  if [ -z "${AIRFLOW_FERNET_KEY:-}" ]; then
    GENERATED_FERNET_KEY="$("$VENV/bin/python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
  fi
}

save_state() {
  (umask 077; {
    echo "AIRFLOW_PORT=$AIRFLOW_PORT API_PORT=$API_PORT PG_PORT=$PG_PORT REDIS_PORT=$REDIS_PORT"
    echo "OPENSEARCH_PORT=$OPENSEARCH_PORT HEALTH_PORT=$HEALTH_PORT"
    echo "GENERATED_FERNET_KEY=$GENERATED_FERNET_KEY"
  } > "$STATE")
}

urlquote() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# The services' environment: docker-compose.yml's x-lookalike-env and x-airflow environment with
# the same names, pointed at this machine's ports and folders (tests/test_stack.py holds the two
# together). Recorded in SERVICE_VARS for `env`.
SERVICE_VARS=()
setenv() { export "$1=$2"; SERVICE_VARS+=("$1"); }

service_env() {
  local pg_password redis_password opensearch_url="http://127.0.0.1:$OPENSEARCH_PORT"
  pg_password="$(urlquote "$POSTGRES_PASSWORD")"
  redis_password="$(urlquote "$REDIS_PASSWORD")"
  setenv LOOKALIKE_HOME "$STACK/lookalike"
  setenv LOOKALIKE_MODEL "$LOOKALIKE_MODEL"
  setenv LOOKALIKE_STORE opensearch
  setenv LOOKALIKE_CLUSTER_URLS "$opensearch_url"
  # The node from Maven Central: no security plugin (no user), no faiss library (lucene engine).
  setenv LOOKALIKE_CLUSTER_USER ""
  setenv LOOKALIKE_OPENSEARCH_ENGINE lucene
  setenv LOOKALIKE_INGEST_SOURCE "$LIBRARY"
  setenv AIRFLOW_HOME "$STACK/airflow"
  setenv AIRFLOW__CORE__DAGS_FOLDER "$REPO/dags"
  setenv AIRFLOW__CORE__EXECUTOR CeleryExecutor
  setenv AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "postgresql+psycopg2://airflow:$pg_password@127.0.0.1:$PG_PORT/airflow"
  setenv AIRFLOW__CELERY__BROKER_URL "redis://:$redis_password@127.0.0.1:$REDIS_PORT/0"
  setenv AIRFLOW__CELERY__RESULT_BACKEND "db+postgresql://airflow:$pg_password@127.0.0.1:$PG_PORT/airflow"
  setenv AIRFLOW__CELERY__WORKER_CONCURRENCY "${AIRFLOW__CELERY__WORKER_CONCURRENCY:-1}"
  setenv AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT 86400
  setenv AIRFLOW__CORE__FERNET_KEY "${AIRFLOW_FERNET_KEY:-$GENERATED_FERNET_KEY}"
  setenv AIRFLOW__API_AUTH__JWT_SECRET "$AIRFLOW_JWT_SECRET"
  setenv AIRFLOW__CORE__EXECUTION_API_SERVER_URL "http://127.0.0.1:$AIRFLOW_PORT/execution/"
  setenv AIRFLOW__API__WORKERS 1
  setenv AIRFLOW__CORE__LOAD_EXAMPLES false
  setenv AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION true
  setenv AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS admin:admin
  setenv AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE "$STACK/airflow/config/passwords.json"
  setenv AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK true
  setenv AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST 127.0.0.1
  setenv AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT "$HEALTH_PORT"
  # Several workers on one machine: each records its own name (LOOKALIKE_WORKER_NAME) on the
  # task instances it runs, not the shared host name.
  setenv AIRFLOW__CORE__HOSTNAME_CALLABLE pipeline.settings.worker_hostname
  setenv AIRFLOW_CONN_OPENSEARCH_DEFAULT \
    "{\"conn_type\": \"opensearch\", \"host\": \"127.0.0.1\", \"port\": $OPENSEARCH_PORT, \"extra\": {\"use_ssl\": false}}"
}

# -- users, processes -------------------------------------------------------------------------------
STACK_USER="${LOOKALIKE_STACK_USER:-lookalike-stack}"
AS_USER=()
if [ "$(id -u)" -eq 0 ]; then
  AS_USER=(setpriv "--reuid=$STACK_USER" "--regid=$STACK_USER" --init-groups --)
fi

ensure_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id "$STACK_USER" >/dev/null 2>&1 && return 0
  log "creating the unprivileged user $STACK_USER (PostgreSQL refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$STACK_USER"
}

as_user() { "${AS_USER[@]}" "$@"; }

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

alive() {  # is service $1 running? (its PID leads its own session, so a reused PID does not count)
  local pid; pid="$(pid_of "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid" ]
}

spawn() {  # name, command...: start it in a session of its own, logging to logs/NAME.log
  local name="$1"; shift
  if alive "$name"; then return 0; fi
  log "starting $name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

stop_services() {  # names: SIGTERM to all at once (Airflow's processes and Celery shut down
  # cleanly on it), wait, then SIGKILL whatever is left in their sessions (task processes run in
  # process groups of their own)
  local name pid pids=() deadline left
  for name in "$@"; do
    pid="$(pid_of "$name")"
    [ -n "$pid" ] || continue
    pids+=("$pid")
    if alive "$name"; then log "stopping $name"; kill -TERM "$pid" 2>/dev/null || true; fi
  done
  deadline=$((SECONDS + 30))
  for pid in ${pids[@]+"${pids[@]}"}; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    left="$(ps -o pid= -s "$pid" 2>/dev/null | tr '\n' ' ' || true)"
    # shellcheck disable=SC2086
    if [ -n "${left// /}" ]; then kill -KILL $left 2>/dev/null || true; fi
  done
  for name in "$@"; do rm -f "$RUN/$name.pid"; done
}

wait_until() {  # what, seconds, service whose death ends the wait ("" for none), command...
  local what="$1" seconds="$2" watch="$3"; shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$watch" ] && ! alive "$watch"; then
      tail -n 40 "$LOGS/$watch.log" >&2 || true
      die "$watch exited while starting (log: $LOGS/$watch.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      if [ -n "$watch" ]; then tail -n 40 "$LOGS/$watch.log" >&2 || true; fi
      die "$what not ready within ${seconds}s (logs: $LOGS)"
    fi
    sleep 1
  done
}

# -- the services -----------------------------------------------------------------------------------
pg_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  die "PostgreSQL is not installed: apt-get install postgresql"
}

start_postgres() {
  local bin data="$STACK/postgres"; bin="$(pg_bin)"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating the PostgreSQL cluster (Airflow's metadata database)"
    local pwfile="$RUN/pgpass"
    (umask 077; printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile")
    if [ "$(id -u)" -eq 0 ]; then chown "$STACK_USER" "$pwfile"; fi
    as_user "$bin/initdb" -D "$data" -U airflow --pwfile="$pwfile" --auth=scram-sha-256 \
      --encoding=UTF8 --no-instructions >>"$LOGS/postgres-init.log" 2>&1 || { tail -n 20 "$LOGS/postgres-init.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
    # Loopback TCP only (no socket file); sized for a small machine (Airflow's processes hold a
    # few connections each).
    cat >> "$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
EOF
  fi
  touch "$LOGS/postgres.log"
  if [ "$(id -u)" -eq 0 ]; then chown "$STACK_USER" "$LOGS/postgres.log"; fi
  if ! as_user "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_user "$bin/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 120 start >/dev/null \
      || { tail -n 20 "$LOGS/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  if ! PGPASSWORD="$POSTGRES_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U airflow -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'airflow'" | grep -q 1; then
    PGPASSWORD="$POSTGRES_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U airflow -d postgres -qc "CREATE DATABASE airflow" >/dev/null
  fi
}

stop_postgres() {
  local bin data="$STACK/postgres"
  [ -f "$data/PG_VERSION" ] || return 0
  bin="$(pg_bin)"
  if as_user "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_user "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
  fi
}

start_redis() {
  command -v redis-server >/dev/null || die "Redis is not installed: apt-get install redis-server"
  (umask 077; cat > "$STACK/redis/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
requirepass "$REDIS_PASSWORD"
dir $STACK/redis
save ""
appendonly no
daemonize no
EOF
  )
  if [ "$(id -u)" -eq 0 ]; then chown "$STACK_USER" "$STACK/redis/redis.conf"; fi
  spawn redis "${AS_USER[@]}" redis-server "$STACK/redis/redis.conf"
}

redis_ready() { REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG; }

opensearch() {  # scripts/opensearch.sh on the stack's node, its data inside the stack's folder
  LOOKALIKE_NODE_RUN="$STACK/opensearch" bash scripts/opensearch.sh "$@"
}

airflow_token() {  # a JWT for the REST API, as the UI's admin user
  curl -fsS -m 10 -H 'Content-Type: application/json' \
    -d "$(python3 -c 'import json, sys; print(json.dumps({"username": "admin", "password": sys.argv[1]}))' "$AIRFLOW_ADMIN_PASSWORD")" \
    "http://127.0.0.1:$AIRFLOW_PORT/auth/token" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

airflow_healthy() {  # metadatabase, scheduler, triggerer and dag processor all report healthy
  curl -fsS -m 10 "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" | python3 -c '
import json, sys
health = json.load(sys.stdin)
parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
sys.exit(0 if all((health.get(p) or {}).get("status") == "healthy" for p in parts) else 1)'
}

dags_parsed() {  # the DAG processor has put both of the project's DAGs in the database
  local token; token="$(airflow_token)"
  curl -fsS -m 10 -H "Authorization: Bearer $token" "http://127.0.0.1:$AIRFLOW_PORT/api/v2/dags?dag_id_pattern=lookalike" \
    | python3 -c 'import json, sys; ids = {d["dag_id"] for d in json.load(sys.stdin)["dags"]}; sys.exit(0 if {"lookalike_ingest", "lookalike_rollout"} <= ids else 1)'
}

workers_answer() {  # every worker answers a Celery ping by its name
  "$VENV/bin/python" -c '
import sys
from airflow.providers.celery.executors.celery_executor_utils import app
names = {name.split("@")[0] for reply in app.control.ping(timeout=3) for name in reply}
sys.exit(0 if set(sys.argv[1:]) <= names else 1)' "$@"
}

api_ready() { curl -fsS -m 10 "http://127.0.0.1:$API_PORT/readyz"; }

worker_names() {  # every worker this stack has a PID file for, and the configured ones
  { seq -f 'worker-%g' "$WORKERS"; ls "$RUN" 2>/dev/null | sed -n 's/^\(worker-[0-9]*\)\.pid$/\1/p'; } | sort -u -V
}

SERVICES=(api-server scheduler dag-processor triggerer)

# -- commands -----------------------------------------------------------------------------------------
up() {
  [ -x "$VENV/bin/airflow" ] || { log "no .venv with Airflow yet: running scripts/setup.sh"; bash scripts/setup.sh; }
  command -v setsid >/dev/null && command -v curl >/dev/null || die "setsid and curl are needed"
  read_settings
  if [ -e "$STACK" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$STACK")" ]; then
    die "$STACK exists and is not a stack folder: choose another --dir"
  fi
  ensure_user
  mkdir -p "$STACK" && touch "$MARKER" && chmod 755 "$STACK"
  # PostgreSQL's and Redis' folders belong to the user they run as; the node's to opensearch.sh.
  mkdir -p "$RUN" "$LOGS" "$STACK/postgres" "$STACK/redis" "$STACK/airflow/config" \
    "$STACK/lookalike" "$STACK/opensearch"
  chmod 700 "$STACK/postgres"
  if [ "$(id -u)" -eq 0 ]; then chown "$STACK_USER:" "$STACK/postgres" "$STACK/redis"; fi
  load_state
  save_state
  service_env

  if [ ! -e "$LIBRARY" ]; then
    log "the library $LIBRARY does not exist: writing the sample library there (lookalike samples)"
    "$VENV/bin/lookalike" samples "$LIBRARY" >&2
  fi

  start_postgres
  start_redis
  # The node starts in the background (20-60 s) while Airflow migrates its database.
  local node_url_file="$RUN/opensearch.url" node_job
  opensearch start --name stack --port "$OPENSEARCH_PORT" --heap "$OPENSEARCH_HEAP" \
    >"$node_url_file" 2>>"$LOGS/opensearch.log" &
  node_job=$!
  wait_until "Redis" 30 redis redis_ready
  if [ ! -f "$STACK/airflow/.migrated" ]; then
    log "migrating Airflow's database"
    "$VENV/bin/airflow" db migrate >>"$LOGS/airflow-init.log" 2>&1 \
      || { tail -n 30 "$LOGS/airflow-init.log" >&2; die "airflow db migrate failed"; }
    touch "$STACK/airflow/.migrated"
  fi
  (umask 077; python3 -c 'import json, sys; json.dump({"admin": sys.argv[1]}, open(sys.argv[2], "w"))' \
    "$AIRFLOW_ADMIN_PASSWORD" "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
  wait "$node_job" || { tail -n 30 "$LOGS/opensearch.log" >&2; die "the OpenSearch node did not start"; }
  # Index templates and search pipelines, as compose's lookalike-init does.
  "$VENV/bin/lookalike" index apply >>"$LOGS/lookalike-init.log" 2>&1 \
    || { tail -n 20 "$LOGS/lookalike-init.log" >&2; die "lookalike index apply failed"; }

  spawn api-server "$VENV/bin/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW_PORT"
  spawn scheduler "$VENV/bin/airflow" scheduler
  spawn dag-processor "$VENV/bin/airflow" dag-processor
  spawn triggerer "$VENV/bin/airflow" triggerer --skip-serve-logs
  local worker names=()
  for worker in $(worker_names); do
    names+=("$worker")
    spawn "$worker" env LOOKALIKE_WORKER_NAME="$worker" "$VENV/bin/airflow" celery worker \
      --celery-hostname "$worker@%h" --skip-serve-logs
  done
  spawn search-api "$VENV/bin/lookalike" serve --host 127.0.0.1 --port "$API_PORT"

  wait_until "Airflow's API server" 180 api-server curl -fsS -m 5 "http://127.0.0.1:$AIRFLOW_PORT/api/v2/version"
  wait_until "the scheduler, triggerer and DAG processor" 180 scheduler airflow_healthy
  wait_until "the DAGs" 180 dag-processor dags_parsed
  wait_until "the Celery workers (${names[*]})" 180 "${names[0]}" workers_answer "${names[@]}"
  wait_until "the search API" 180 search-api api_ready
  status
}

down() {
  if [ ! -e "$STACK" ]; then log "no stack in $STACK"; return 0; fi
  [ -f "$MARKER" ] || die "$STACK is not a stack folder: not touching it"
  # shellcheck disable=SC2046
  stop_services search-api $(worker_names) triggerer dag-processor scheduler api-server
  stop_services redis
  opensearch stop --name stack >/dev/null 2>&1 || true
  stop_postgres
  rm -rf "$STACK"
  log "stopped; removed $STACK"
}

status() {
  if [ ! -f "$MARKER" ] || [ ! -f "$STATE" ]; then echo "no stack in $STACK"; return 3; fi
  read_settings
  load_state
  local down=0 name state
  line() { printf '  %-14s %-8s %s\n' "$1" "$2" "$3"; }
  echo "Lookalike stack in $STACK"
  if as_user "$(pg_bin)/pg_ctl" -D "$STACK/postgres" status >/dev/null 2>&1; then state=running; else state=stopped; down=1; fi
  line postgres "$state" "127.0.0.1:$PG_PORT (database airflow, user airflow)"
  if alive redis; then state=running; else state=stopped; down=1; fi
  line redis "$state" "127.0.0.1:$REDIS_PORT (Celery broker)"
  if opensearch status --name stack >/dev/null 2>&1; then state=running; else state=stopped; down=1; fi
  line opensearch "$state" "http://127.0.0.1:$OPENSEARCH_PORT"
  for name in "${SERVICES[@]}" $(worker_names) search-api; do
    if alive "$name"; then state=running; else state=stopped; down=1; fi
    case "$name" in
      api-server) line "$name" "$state" "http://127.0.0.1:$AIRFLOW_PORT  (Airflow UI and REST API: admin / AIRFLOW_ADMIN_PASSWORD)" ;;
      search-api) line "$name" "$state" "http://127.0.0.1:$API_PORT  (lookalike serve: page, /docs)" ;;
      worker-*) line "$name" "$state" "Celery worker $name" ;;
      *) line "$name" "$state" "" ;;
    esac
  done
  echo "  library        $LIBRARY"
  echo "  logs           $LOGS"
  return $((down * 3))
}

print_env() {
  read_settings
  load_state
  service_env
  local name
  for name in "${SERVICE_VARS[@]}"; do printf 'export %s=%q\n' "$name" "${!name}"; done
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  *) usage ;;
esac
