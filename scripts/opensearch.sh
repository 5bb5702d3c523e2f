#!/usr/bin/env bash
# Run a local OpenSearch (or Elasticsearch) node without Docker, put together from Maven Central.
#
#   scripts/opensearch.sh start [--name N] [--nodes K] [--node I] [--port P] [--heap 512m]
#                               [--distribution opensearch|elasticsearch] [-E key=value ...]
#   scripts/opensearch.sh stop [--name N] [--node I] [--keep]      (--all: every node)
#   scripts/opensearch.sh status [--name N]
#   scripts/opensearch.sh url [--name N]
#
# `start` prints the node's URL on stdout (everything else goes to stderr), so
# `export LOOKALIKE_CLUSTER_URLS=$(scripts/opensearch.sh start)` works. Security is off (the
# integ-test distribution has no security plugin), the node listens on 127.0.0.1 only, on a free
# port, with a small heap and its data in a temporary folder that `stop` removes.
#
# What it assembles (once, into a cache outside the clone; Maven verifies every checksum):
#   org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip  (server + core modules)
#   org.opensearch.plugin:opensearch-knn:$VERSION.0:zip                  (knn_vector, k-NN query)
# The Maven zip of k-NN lacks the faiss/nmslib native libraries (k-NN issue 2643), so the tests
# use the pure-Java lucene engine. opensearch-neural-search (the `hybrid` query) and
# opensearch-ml-plugin are not published on Maven Central, so the node has no hybrid query:
# Lookalike detects that and fuses on the client (docs/opensearch.md).
# --distribution elasticsearch uses org.elasticsearch.distribution.integ-test-zip instead.
#
# --nodes K starts a K-node cluster on loopback under one name: node 1 is cluster manager and
# data node, the others data nodes. --node I (with start/stop) acts on node I only, e.g. to
# restart a killed node so that it rejoins with its data.
#
# Settings (environment):
#   LOOKALIKE_OPENSEARCH_VERSION     3.5.0 (k-NN is served for 3.5.0.0 and 2.19.1.0)
#   LOOKALIKE_ELASTICSEARCH_VERSION  8.19.21
#   LOOKALIKE_NODE_CACHE             assembled distributions (root: /var/cache/lookalike,
#                                    others: ${XDG_CACHE_HOME:-~/.cache}/lookalike)
#   LOOKALIKE_NODE_RUN               running nodes' config, data and logs
#                                    (${TMPDIR:-/tmp}/lookalike-nodes-$UID)
#   LOOKALIKE_NODE_USER              the unprivileged user a root caller runs nodes as
#                                    (created if missing; OpenSearch refuses to run as root)
#   JAVA_HOME                        a Java >= 21 (else /usr/lib/jvm/temurin-25-jdk-amd64, ...)
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(...) stops the script too

OS_VERSION="${LOOKALIKE_OPENSEARCH_VERSION:-3.5.0}"
ES_VERSION="${LOOKALIKE_ELASTICSEARCH_VERSION:-8.19.21}"
if [ "$(id -u)" -eq 0 ]; then
  CACHE="${LOOKALIKE_NODE_CACHE:-/var/cache/lookalike}"
else
  CACHE="${LOOKALIKE_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookalike}"
fi
RUN="${LOOKALIKE_NODE_RUN:-${TMPDIR:-/tmp}/lookalike-nodes-$(id -u)}"
NODE_USER="${LOOKALIKE_NODE_USER:-lookalike-search}"
WAIT_S="${LOOKALIKE_NODE_WAIT_S:-180}"

log() { echo "opensearch.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# -- arguments ------------------------------------------------------------------------------------
cmd="${1:-}"; [ -n "$cmd" ] || usage; shift
name="default" nodes=1 only="" port="" heap="${LOOKALIKE_NODE_HEAP:-512m}" keep=0 all=0
distribution="opensearch" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --node) only="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --heap) heap="$2"; shift 2 ;;
    --distribution) distribution="$2"; shift 2 ;;
    --elasticsearch) distribution="elasticsearch"; shift ;;
    -E) extra+=("$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    --all) all=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--name must be letters, digits, '.', '_' or '-'"
[[ "$nodes" =~ ^[1-9]$ ]] || die "--nodes must be 1 to 9"
case "$distribution" in opensearch|elasticsearch) ;; *) die "--distribution: opensearch or elasticsearch" ;; esac
cluster_dir="$RUN/$name"

# -- Java, users, ports -----------------------------------------------------------------------------
java_major() { "$1/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p'; }

find_java() {
  local candidate
  for candidate in "${JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-21-jdk-amd64 \
    /usr/lib/jvm/java-25-openjdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64 \
    "$(dirname "$(dirname "$(readlink -f "$(command -v java 2>/dev/null || echo /nonexistent)")")")"; do
    if [ -n "$candidate" ] && [ -x "$candidate/bin/java" ] && [ "$(java_major "$candidate")" -ge 21 ] 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  die "no Java 21 or newer found (OpenSearch 3 needs one): install e.g. openjdk-21-jre-headless or set JAVA_HOME"
}

run_as() {  # run a command as the node user (root) or as ourselves
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$NODE_USER" -- "$@"; else "$@"; fi
}

ensure_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id "$NODE_USER" >/dev/null 2>&1 && return 0
  log "creating the unprivileged user $NODE_USER (OpenSearch refuses to run as root)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$NODE_USER"
}

# A free port below the kernel's ephemeral range (ip_local_port_range): a node restarted on its
# old port must find it free, and an outgoing connection can take any ephemeral port meanwhile.
free_port() {
  python3 - <<'PY'
import pathlib, random, socket
ports = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")  # Linux; elsewhere the kernel picks
low = int(ports.read_text().split()[0]) if ports.exists() else 0
candidates = range(20000, min(low, 32768)) if low > 20200 else [0]  # [0]: the kernel's pick
for port in random.sample(candidates, min(200, len(candidates))):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
else:
    raise SystemExit("no free port below the ephemeral range")
PY
}

# -- the distribution, assembled once ---------------------------------------------------------------
# SHA-256 of the pinned versions' zips. The registry does not always serve Maven Central's own
# checksum files (the 3.5.0 integ-test zip's .sha1 answered 404 on 2026-12-02), so these pins are
# the check; a version without a pin (set by the environment) needs Maven's checksums instead.
declare -A PINNED=(
  [opensearch-3.5.0.zip]=b676ad392c95a94d8d2bd8785b8b922c7811536daf6a9ec0c7277a34bd8a17a9
  [opensearch-knn-3.5.0.0.zip]=99fdf3ac9ef95974e276298b83a58532bf21ba13bd5fd96a4b59465b7e613309
  [elasticsearch-8.19.21.zip]=215d5f3dbf0609a149f6218a9e47b6ae2df34ebbff3c5754e35f15a5e5393c8a
)

fetch() {  # fetch G:A:V:zip into $CACHE/downloads with Maven, check its hash; print the path
  local coords="$1" file="$CACHE/downloads/$2" pin="${PINNED[$2]:-}" policy=-C
  [ -n "$pin" ] && policy=-c  # the pin is checked below, whether Maven has checksums or not
  if [ ! -s "$file" ]; then
    command -v mvn >/dev/null || die "Maven is needed to fetch $coords (apt-get install maven)"
    log "fetching $coords from Maven Central"
    mkdir -p "$CACHE/downloads"
    mvn -B -q "$policy" dependency:copy -Dartifact="$coords" -DoutputDirectory="$CACHE/downloads" \
      -Dmdep.overWriteReleases=true >&2 || die "Maven could not fetch $coords"
  fi
  if [ -n "$pin" ] && ! echo "$pin  $file" | sha256sum --check --quiet --status; then
    rm -f "$file"
    die "$coords does not have the pinned SHA-256 $pin (removed; run again to fetch it anew)"
  fi
  echo "$file"
}

assemble() {  # print the home folder of a ready distribution
  local home marker tmp zip
  if [ "$distribution" = opensearch ]; then home="$CACHE/opensearch-$OS_VERSION"; else home="$CACHE/elasticsearch-$ES_VERSION"; fi
  marker="$home/.lookalike-assembled"
  if [ -f "$marker" ]; then echo "$home"; return; fi
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.assemble.XXXXXX")"
  if [ "$distribution" = opensearch ]; then
    zip="$(fetch "org.opensearch.distribution.integ-test-zip:opensearch:$OS_VERSION:zip" "opensearch-$OS_VERSION.zip")"
    local knn; knn="$(fetch "org.opensearch.plugin:opensearch-knn:$OS_VERSION.0:zip" "opensearch-knn-$OS_VERSION.0.zip")"
    unzip -q "$zip" -d "$tmp"
    log "installing the k-NN plugin"
    JAVA_HOME="$JAVA" "$tmp/opensearch-$OS_VERSION/bin/opensearch-plugin" install --batch "file://$knn" >&2
    mv "$tmp/opensearch-$OS_VERSION" "$tmp/home"
  else
    zip="$(fetch "org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" "elasticsearch-$ES_VERSION.zip")"
    unzip -q "$zip" -d "$tmp"
    mv "$tmp/elasticsearch-$ES_VERSION" "$tmp/home"
  fi
  chmod -R a+rX "$tmp/home"
  rm -rf "$home"
  mv "$tmp/home" "$home"
  rmdir "$tmp"
  touch "$marker"
  echo "$home"
}

# -- one node -------------------------------------------------------------------------------------
node_dir() { echo "$cluster_dir/node-$1"; }

# Is process $1 alive? A killed node's JVM stays a zombie until its parent reaps it, and a
# daemon's parent is PID 1, which in a container or a small VM may reap late; `kill -0` succeeds
# on a zombie, so ask for the state instead.
alive() {
  local state; state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}

running() {  # is node $1 alive?
  local pid_file; pid_file="$(node_dir "$1")/pid"
  [ -s "$pid_file" ] && alive "$(cat "$pid_file")"
}

write_config() {  # node index, its home, http port, transport port, seeds, managers
  local i="$1" home="$2" http="$3" transport="$4" seeds="$5" managers="$6" dir conf
  dir="$(node_dir "$i")"; conf="$dir/config"
  mkdir -p "$dir/data" "$dir/logs"
  rm -rf "$conf"; cp -r "$home/config" "$conf"
  # The shipped jvm.options writes GC logs and heap dumps relative to the working directory.
  sed -i -e "s#file=logs/gc.log#file=$dir/logs/gc.log#" -e "s#HeapDumpPath=data#HeapDumpPath=$dir/data#" \
    -e "s#ErrorFile=logs/#ErrorFile=$dir/logs/#" -e '/^-Xm[sx]/d' "$conf/jvm.options"
  local manager_role="cluster_manager" initial="cluster.initial_cluster_manager_nodes" yml="$conf/opensearch.yml"
  if [ "$distribution" = elasticsearch ]; then
    manager_role="master" initial="cluster.initial_master_nodes" yml="$conf/elasticsearch.yml"
  fi
  {
    echo "cluster.name: lookalike-$name"
    echo "node.name: $name-$i"
    echo "network.host: 127.0.0.1"
    echo "http.port: $http"
    echo "transport.port: $transport"
    echo "path.data: $dir/data"
    echo "path.logs: $dir/logs"
    if [ "$nodes" -eq 1 ]; then
      echo "discovery.type: single-node"
    else
      echo "discovery.seed_hosts: [$seeds]"
      echo "$initial: [$managers]"
      if [ "$i" -eq 1 ]; then echo "node.roles: [$manager_role, data, ingest]"; else echo "node.roles: [data, ingest]"; fi
    fi
    # A laptop's disk is often fuller than the default watermarks allow.
    echo "cluster.routing.allocation.disk.threshold_enabled: false"
    if [ "$distribution" = elasticsearch ]; then
      echo "xpack.security.enabled: false"
    fi
    local setting
    for setting in ${extra[@]+"${extra[@]}"}; do echo "${setting%%=*}: ${setting#*=}"; done
  } > "$yml"
  echo "$http" > "$dir/http_port"; echo "$transport" > "$dir/transport_port"
  if [ "$(id -u)" -eq 0 ]; then chown -R "$NODE_USER" "$cluster_dir"; fi
}

launch() {  # node index, home
  local i="$1" home="$2" dir; dir="$(node_dir "$i")"
  local heap_opts="-Xms$heap -Xmx$heap"
  log "starting $distribution node $name-$i on http://127.0.0.1:$(cat "$dir/http_port")"
  if [ "$distribution" = opensearch ]; then
    (cd "$dir" && run_as env JAVA_HOME="$JAVA" OPENSEARCH_PATH_CONF="$dir/config" \
      OPENSEARCH_JAVA_OPTS="$heap_opts" "$home/bin/opensearch" -d -p "$dir/pid" >"$dir/logs/stdout.log" 2>&1) \
      || { tail -n 30 "$dir/logs/stdout.log" >&2; die "node $name-$i did not start"; }
  else
    (cd "$dir" && run_as env ES_JAVA_HOME="$JAVA" ES_PATH_CONF="$dir/config" \
      ES_JAVA_OPTS="$heap_opts" "$home/bin/elasticsearch" -d -p "$dir/pid" >"$dir/logs/stdout.log" 2>&1) \
      || { tail -n 30 "$dir/logs/stdout.log" >&2; die "node $name-$i did not start"; }
  fi
}

wait_ready() {  # url, expected number of nodes
  local url="$1" want="$2" deadline=$((SECONDS + WAIT_S)) health
  while [ $SECONDS -lt $deadline ]; do
    health="$(curl -s -m 5 "$url/_cluster/health?wait_for_status=green&wait_for_nodes=$want&timeout=5s" || true)"
    case "$health" in *'"timed_out":false'*) return 0 ;; esac
    local i; for i in $(seq "$nodes"); do
      [ -z "$only" ] || [ "$i" = "$only" ] || continue
      if [ -s "$(node_dir "$i")/pid" ] && ! running "$i"; then
        tail -n 40 "$(node_dir "$i")/logs/lookalike-$name.log" >&2 2>/dev/null || true
        tail -n 20 "$(node_dir "$i")/logs/stdout.log" >&2 2>/dev/null || true
        die "node $name-$i exited while starting (logs: $(node_dir "$i")/logs)"
      fi
    done
    sleep 1
  done
  die "the cluster at $url was not green with $want node(s) within ${WAIT_S}s (logs: $cluster_dir)"
}

cluster_url() { echo "http://127.0.0.1:$(cat "$(node_dir 1)/http_port")"; }

# -- commands -------------------------------------------------------------------------------------
start() {
  if [ -f "$cluster_dir/nodes" ]; then nodes="$(cat "$cluster_dir/nodes")"; fi
  if [ -n "$only" ]; then
    [ -f "$(node_dir "$only")/http_port" ] || die "no node $only in cluster $name (start the cluster first)"
  elif running 1; then
    log "already running"; cluster_url; return
  fi
  JAVA="$(find_java)"
  ensure_user
  local home; home="$(assemble)"
  mkdir -p "$cluster_dir"; chmod 755 "$RUN" "$cluster_dir" 2>/dev/null || true
  echo "$nodes" > "$cluster_dir/nodes"
  echo "$distribution" > "$cluster_dir/distribution"
  local i seeds="" managers="$name-1"
  if [ -z "$only" ]; then
    for i in $(seq "$nodes"); do
      local http; http="${port:-$(free_port)}"; port=""
      local transport; transport="$(free_port)"
      mkdir -p "$(node_dir "$i")"; echo "$http" > "$(node_dir "$i")/http_port"; echo "$transport" > "$(node_dir "$i")/transport_port"
    done
  fi
  for i in $(seq "$nodes"); do seeds="${seeds:+$seeds, }127.0.0.1:$(cat "$(node_dir "$i")/transport_port")"; done
  for i in $(seq "$nodes"); do
    [ -z "$only" ] || [ "$i" = "$only" ] || continue
    running "$i" && continue
    rm -f "$(node_dir "$i")/pid"  # left by a node that was killed
    write_config "$i" "$home" "$(cat "$(node_dir "$i")/http_port")" "$(cat "$(node_dir "$i")/transport_port")" "$seeds" "$managers"
    launch "$i" "$home"
  done
  wait_ready "$(cluster_url)" "$nodes"
  log "ready: $(cluster_url) ($distribution, $nodes node(s), data in $cluster_dir)"
  cluster_url
}

stop_node() {
  local i="$1" dir pid; dir="$(node_dir "$i")"
  if running "$i"; then
    pid="$(cat "$dir/pid")"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name-$i"
  fi
  rm -f "$dir/pid"
}

stop() {
  if [ "$all" -eq 1 ]; then
    local d
    for d in "$RUN"/*/; do [ -d "$d" ] || continue; "$0" stop --name "$(basename "$d")" $([ "$keep" -eq 1 ] && echo --keep); done
    return
  fi
  [ -d "$cluster_dir" ] || { log "no cluster named $name"; return 0; }
  [ -f "$cluster_dir/nodes" ] && nodes="$(cat "$cluster_dir/nodes")"
  local i
  for i in $(seq "$nodes"); do
    [ -z "$only" ] || [ "$i" = "$only" ] || continue
    stop_node "$i"
  done
  if [ -z "$only" ] && [ "$keep" -eq 0 ]; then rm -rf "$cluster_dir"; fi
}

status() {
  [ -f "$cluster_dir/nodes" ] || { echo "$name: not running"; return 3; }
  nodes="$(cat "$cluster_dir/nodes")"
  local i up=0
  for i in $(seq "$nodes"); do
    if running "$i"; then up=$((up + 1)); echo "$name-$i: running, pid $(cat "$(node_dir "$i")/pid"), http://127.0.0.1:$(cat "$(node_dir "$i")/http_port")";
    else echo "$name-$i: stopped"; fi
  done
  if [ "$up" -gt 0 ]; then
    curl -s -m 5 "$(cluster_url)/_cluster/health" | python3 -c 'import json, sys; h = json.load(sys.stdin); print("cluster %s: %s, %s node(s)" % (h["cluster_name"], h["status"], h["number_of_nodes"]))' || true
  fi
  [ "$up" -gt 0 ] || return 3
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) [ -f "$(node_dir 1)/http_port" ] || die "no cluster named $name"; cluster_url ;;
  *) usage ;;
esac
