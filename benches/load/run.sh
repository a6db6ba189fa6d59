#!/usr/bin/env bash
# benches/load/run.sh — scopegate next to the proxies users would otherwise pick, same machine,
# same run. Self-contained: needs nothing outside this repository but Debian packages.
#
# Targets (TARGETS, in this order by default):
#   direct            wrk straight to the upstream (no proxy: the ceiling)
#   haproxy           HAProxy, plain reverse proxy, no auth
#   nginx             nginx proxy_pass, no auth
#   haproxy-jwt       HAProxy 2.6 verifying the HS256 JWT itself: jwt_verify with alg pinned to
#                     HS256, exp checked against date(), "state.read" required in the space-
#                     separated scope claim; 401 for a bad/absent/expired token, 403 without the
#                     scope. Same frontend/backend settings as "haproxy", so the two differ only
#                     by the JWT rules.
#   scopegate         scopegate, GET /v1/state, verifying the token and requiring state.read
#   scopegate-noauth  the same scopegate process, GET /v1/public (a `public = true` route to the
#                     same upstream): scopegate's own auth-off path. wrk sends the same
#                     Authorization header (a public route ignores it), so the requests are
#                     byte-identical and the difference to "scopegate" is the auth work.
#
# What it does, all on 127.0.0.1, every load run bounded by wrk's -d:
#   1. installs nginx, haproxy and wrk from Debian if they are missing (needs root + apt);
#   2. creates an org, a production key and a token with scopegate's CLI, starts an nginx
#      upstream answering "ok";
#   3. idle phase (before any load; skipped with IDLE_CONNS=0): for each N in IDLE_CONNS and
#      each proxy target, starts a FRESH process, opens N keep-alive connections one after the
#      other, each making one request and reading its response (idle_conns.py), holds them
#      idle, and reports the process's RSS growth per connection; then stops that process.
#      Every request carries the benchmark token (the targets without auth just forward it);
#      RSS is summed over the target's processes (nginx: master + workers);
#   4. starts every proxy again (fresh), proves that every auth-enforcing target (haproxy-jwt,
#      scopegate) refuses bad tokens — no token, malformed, bad signature, tampered payload,
#      alg none, expired, no exp, missing scope, scope only as a prefix — and answers 200 to
#      good ones, and that the public route answers without a token; stops if any case differs;
#   5. warms each target up, then runs ROUNDS rounds of wrk alternating targets (A B C A B C …);
#      around each wrk run reads utime+stime (fields 14+15 of /proc/PID/stat, in CLK_TCK ticks)
#      of every process of the target's session and divides by the requests wrk completed;
#      records the target's RSS after the run, and the CPU that processes other than wrk, the
#      upstream and the target used meanwhile ("other CPU", % of all CPUs: a noise indicator;
#      the summary warns when its median reaches 5%);
#   6. prints one markdown table of medians over rounds (req/s with ratios to direct and to
#      haproxy, p50, p99, CPU µs/req), idle bytes/connection at each N, RSS after load, and the
#      non-2xx count summed over rounds.
# Only processes this script started are stopped, by their process-group id (each is started
# in its own session). Ports 28580-28599 by default; a port already in use stops the run.
#
# Knobs (environment):
#   ROUNDS=5            load rounds (each target once per round)
#   DURATION=10         seconds per wrk run
#   WARMUP=2            seconds of wrk per target before the rounds (0 skips)
#   CONNS=64            wrk connections
#   PIN_MODE=split      split: each proxy pinned alone to CPU 0 with one worker/thread; the
#                       upstream (1 worker), wrk (-t1) and idle_conns.py on CPU 1 — "can it
#                       keep up on one core".
#                       shared: nothing pinned, proxies and upstream get 2 workers, wrk -t2 —
#                       everything competes for the same cores, so req/s reflects total cost.
#   TARGETS="direct haproxy nginx haproxy-jwt scopegate scopegate-noauth"
#                       subset/order of targets (ratios show NA when direct/haproxy are left out)
#   IDLE_CONNS="2000 10000"
#                       idle keep-alive connections held per fresh process, one measurement per
#                       value; 0 (or empty) disables the idle phase. The proxies' connection
#                       limits (HAProxy maxconn, nginx worker_connections, scopegate
#                       max_connections) are sized to max(4096, N + 1024) for each idle run and to
#                       max(4096, CONNS + 1024) for the load phase. nginx preallocates its
#                       worker_connections slots at start, so that part of its per-connection
#                       cost is in the baseline, not in the growth.
#   IDLE_HOLD=2         seconds the idle connections stay open after the last one is set up
#                       (RSS is read 1 s into the hold)
#   BIN=./target/release/scopegate
#                       the scopegate binary (build it first: cargo build --release)
#   SCOPEGATE_LOG=info  scopegate's log level during the run. At info scopegate writes one access
#                       line per request (to its log file in the run directory), which is part of
#                       its measured cost; the peers run with access logging off. SCOPEGATE_LOG=warn
#                       compares like with like.
#   PORT_UP=28580 PORT_HAPROXY=28581 PORT_NGINX=28582 PORT_GW=28583 PORT_ADMIN=28584
#   PORT_HAPROXY_JWT=28585
#   KEEP_RUN=1          keep the scratch directory (configs, logs, samples.tsv, idle.tsv, raw
#                       wrk output); by default it is kept only when the run fails
# The open-file soft limit is raised to min(65536, hard limit); the largest IDLE_CONNS must fit
# under it with 1024 to spare.
#
# Usage: cargo build --release && benches/load/run.sh
#        ROUNDS=3 DURATION=5 CONNS=64 benches/load/run.sh
#        ROUNDS=1 DURATION=2 IDLE_CONNS=2000 BIN=/path/to/scopegate benches/load/run.sh
#        PIN_MODE=shared TARGETS="direct haproxy-jwt scopegate" IDLE_CONNS=0 benches/load/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=$PWD/benches/load
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
PIN_MODE=${PIN_MODE:-split}
TARGETS=${TARGETS:-direct haproxy nginx haproxy-jwt scopegate scopegate-noauth}
IDLE_CONNS=${IDLE_CONNS-2000 10000}
IDLE_HOLD=${IDLE_HOLD:-2}
BIN=${BIN:-./target/release/scopegate}
SCOPEGATE_LOG=${SCOPEGATE_LOG:-info}
KEEP_RUN=${KEEP_RUN:-}
PORT_UP=${PORT_UP:-28580}
PORT_HAPROXY=${PORT_HAPROXY:-28581}
PORT_NGINX=${PORT_NGINX:-28582}
PORT_GW=${PORT_GW:-28583}
PORT_ADMIN=${PORT_ADMIN:-28584}
PORT_HAPROXY_JWT=${PORT_HAPROXY_JWT:-28585}
SCOPE=state.read

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
  else
    echo "install nginx, haproxy and wrk first (Debian: apt-get install nginx haproxy wrk)" >&2; exit 1
  fi
fi
for tool in curl python3 taskset; do need "$tool" || { echo "missing tool: $tool" >&2; exit 1; }; done
[ -x "$BIN" ] || { echo "build first: cargo build --release (or pass BIN=)" >&2; exit 1; }

case $PIN_MODE in
  split)  PIN_T="taskset -c 0"; PIN_L="taskset -c 1"; WORKERS=1; THREADS=1 ;;
  shared) PIN_T=""; PIN_L=""; WORKERS=2; THREADS=2 ;;
  *) echo "PIN_MODE must be split or shared" >&2; exit 1 ;;
esac
for t in $TARGETS; do
  case $t in direct | haproxy | nginx | haproxy-jwt | scopegate | scopegate-noauth) ;;
    *) echo "unknown target: $t" >&2; exit 1 ;; esac
done
IDLE_NS=()
for n in $IDLE_CONNS; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "IDLE_CONNS must be numbers: $IDLE_CONNS" >&2; exit 1; }
  if [ "$n" -gt 0 ]; then IDLE_NS+=("$n"); fi
done
IDLE_MAX=0; for n in "${IDLE_NS[@]}"; do if [ "$n" -gt "$IDLE_MAX" ]; then IDLE_MAX=$n; fi; done
conn_limit() { local n=$(($1 + 1024)); if [ "$n" -lt 4096 ]; then n=4096; fi; echo "$n"; }

# Enough descriptors for thousands of idle connections (children inherit the soft limit).
HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -gt 65536 ]; then NOFILE=65536; else NOFILE=$HARD; fi
ulimit -Sn "$NOFILE"
if [ "$NOFILE" -lt "$(conn_limit "$IDLE_MAX")" ] || [ "$NOFILE" -lt "$(conn_limit "$CONNS")" ]; then
  echo "open-file limit $NOFILE too low for IDLE_CONNS=$IDLE_CONNS / CONNS=$CONNS (needs N + 1024)" >&2; exit 1
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT_UP" "$PORT_HAPROXY" "$PORT_NGINX" "$PORT_GW" "$PORT_ADMIN" "$PORT_HAPROXY_JWT"; do
  if port_busy "$p"; then echo "port $p is already in use by another process; pick other PORT_* values" >&2; exit 1; fi
done

RUN=$(mktemp -d /tmp/scopegate-load.XXXXXX)
mkdir -p "$RUN/raw"
declare -A PID_OF=()   # process name -> pid (= its process group and session id)
IDLE_PID=""
OK_EXIT=""
stop_group() { # pid [grace in tenths of a second]: TERM the group, KILL what is left, reap
  local pid=$1 grace=${2:-50} i
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < grace; i++)); do
    # shellcheck disable=SC2009  # pgrep would count zombies as still running
    ps -o stat= --sid "$pid" 2>/dev/null | grep -qv '^Z' || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local name
  if [ -n "$IDLE_PID" ]; then kill "$IDLE_PID" 2>/dev/null || true; fi
  for name in "${!PID_OF[@]}"; do stop_group "${PID_OF[$name]}" 20; done
  if [ -n "$OK_EXIT" ] && [ -z "$KEEP_RUN" ]; then rm -rf "$RUN"; else echo "run directory kept: $RUN" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command…  (own session and process group, so stop ends its children too)
  local name=$1; shift
  setsid bash -c "exec $*" >"$RUN/$name.log" 2>&1 </dev/null &
  PID_OF[$name]=$!
}
stop() { # name
  local pid=${PID_OF[$1]:-}
  [ -n "$pid" ] || return 0
  stop_group "$pid"
  unset "PID_OF[$1]"
}
wait_http() { # name url [code]: until the url answers (any status, or exactly code); the process must stay up
  local name=$1 url=$2 want=${3:-} got
  for _ in $(seq 1 100); do
    if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then echo "$name exited; log:" >&2; cat "$RUN/$name.log" >&2; exit 1; fi
    got=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)
    if [ "$got" != 000 ] && { [ -z "$want" ] || [ "$got" = "$want" ]; }; then return 0; fi
    sleep 0.1
  done
  echo "$name never answered on $url; log:" >&2; cat "$RUN/$name.log" >&2; exit 1
}
wait_free() { # port: a stopped process's listener is gone
  for _ in $(seq 1 50); do port_busy "$1" || return 0; sleep 0.1; done
  echo "port $1 still in use after stopping its process" >&2; exit 1
}
cpu_ticks() { # session id -> utime+stime of its processes, in clock ticks
  local sum=0 p f fs
  for p in $(ps -o pid= --sid "$1" 2>/dev/null); do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }                                  # drop "pid (comm) ": field 3 is now the first
    read -r -a fs <<<"$f"
    sum=$((sum + fs[11] + fs[12]))               # fields 14 (utime) and 15 (stime)
  done
  echo "$sum"
}
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }  # all CPUs, ticks
rss_kib() { ps -o rss= --sid "$1" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
HZ=$(getconf CLK_TCK)

# ------------------------------------------------------------------------ configs, tokens ---
# Upstream: nginx answering 200 "ok" on every path.
mkdir -p "$RUN/up" "$RUN/nginx"
cat >"$RUN/up.conf" <<NGX
worker_processes $WORKERS; pid $RUN/up.pid; error_log $RUN/up-error.log;
events { worker_connections $(conn_limit "$CONNS"); }
http { access_log off; server { listen 127.0.0.1:$PORT_UP; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
NGX

haproxy_conf() { # file port maxconn jwt(0|1)
  cat >"$1" <<HAP
global
  nbthread $WORKERS
  maxconn $3
  # the hard open-file limit may be below HAProxy's wish (2 × maxconn); run with what there is
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 300s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$2
HAP
  if [ "$4" = 1 ]; then
    cat >>"$1" <<HAP
  http-request set-var(txn.bearer) http_auth_bearer
  http-request return status 401 content-type text/plain string "missing bearer token" hdr www-authenticate Bearer unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request return status 401 content-type text/plain string "alg not allowed" unless { var(txn.alg) -m str HS256 }
  http-request return status 401 content-type text/plain string "bad signature" unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request return status 401 content-type text/plain string "token expired" unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope')
  http-request return status 403 content-type text/plain string "missing scope" unless { var(txn.scope) -m reg '(^| )${SCOPE//./[.]}( |\$)' }
HAP
  fi
  cat >>"$1" <<HAP
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$PORT_UP
HAP
}

nginx_conf() { # maxconn
  cat >"$RUN/nginx.conf" <<NGX
worker_processes $WORKERS; pid $RUN/nginx.pid; error_log $RUN/nginx-error.log;
events { worker_connections $1; }
http { access_log off;
  upstream up { server 127.0.0.1:$PORT_UP; keepalive 128; }
  server { listen 127.0.0.1:$PORT_NGINX; keepalive_requests 1000000; keepalive_timeout 300s;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
}

# scopegate: /v1/state requires state.read; /v1/public is public; same upstream.
scopegate_conf() { # maxconn
  cat >"$RUN/scopegate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT_GW"
max_connections = $1
[admin]
listen = "127.0.0.1:$PORT_ADMIN"
[keys]
dir = "keys"
[auth]
audiences = ["gateway"]
[keys_api]
enabled = false
[token_exchange]
enabled = false
[upstreams.up]
url = "http://127.0.0.1:$PORT_UP"
[[routes]]
methods = ["GET"]
path = "/v1/state"
scopes = ["$SCOPE"]
upstream = "up"
[[routes]]
methods = ["GET"]
path = "/v1/public"
public = true
upstream = "up"
TOML
}

# A production key and a token narrowed by scope.
scopegate_conf "$(conn_limit "$CONNS")"
ORG=$("$BIN" --config "$RUN/scopegate.toml" --json orgs create --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
KEY_JSON=$("$BIN" --config "$RUN/scopegate.toml" --json keys create --org "$ORG" --use production --name bench 2>/dev/null)
KID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$KEY_JSON")
SECRET=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$KEY_JSON")
# HAProxy reads the secret inside a double-quoted config string.
[[ $SECRET =~ ^[A-Za-z0-9_.~-]+$ ]] || { echo "unexpected characters in the key secret" >&2; exit 1; }
TOKEN=$("$BIN" --config "$RUN/scopegate.toml" tokens generate --key "$KID" --secret "$SECRET" --audience gateway --scope "$SCOPE state.write" --expires-in 2h)
AUTH="authorization: Bearer $TOKEN"

# Per-target facts. The process a target loads, its port and the path wrk asks for.
declare -A PROC=([haproxy]=haproxy [nginx]=nginx [haproxy-jwt]=haproxy-jwt [scopegate]=scopegate [scopegate-noauth]=scopegate)
declare -A PORTS=([direct]=$PORT_UP [haproxy]=$PORT_HAPROXY [nginx]=$PORT_NGINX [haproxy-jwt]=$PORT_HAPROXY_JWT [scopegate]=$PORT_GW [scopegate-noauth]=$PORT_GW)
path_of() { if [ "$1" = scopegate-noauth ]; then echo /v1/public; else echo /v1/state; fi; }

start_proc() { # name maxconn: write its config with that connection limit, start it, wait until it serves
  case $1 in
    haproxy)
      haproxy_conf "$RUN/haproxy.cfg" "$PORT_HAPROXY" "$2" 0
      start haproxy "$PIN_T" haproxy -db -f "$RUN/haproxy.cfg"
      wait_http haproxy "http://127.0.0.1:$PORT_HAPROXY/" ;;
    haproxy-jwt)
      haproxy_conf "$RUN/haproxy-jwt.cfg" "$PORT_HAPROXY_JWT" "$2" 1
      start haproxy-jwt "$PIN_T" haproxy -db -f "$RUN/haproxy-jwt.cfg"
      wait_http haproxy-jwt "http://127.0.0.1:$PORT_HAPROXY_JWT/" ;;
    nginx)
      nginx_conf "$2"
      start nginx "$PIN_T" nginx -p "$RUN/nginx" -c "$RUN/nginx.conf" -g "'daemon off;'"
      wait_http nginx "http://127.0.0.1:$PORT_NGINX/" ;;
    scopegate)
      scopegate_conf "$2"
      start scopegate "$PIN_T" env SCOPEGATE_WORKERS="$WORKERS" SCOPEGATE_LOG="$SCOPEGATE_LOG" "$BIN" serve --config "$RUN/scopegate.toml"
      wait_http scopegate "http://127.0.0.1:$PORT_ADMIN/readyz" 200 ;;
  esac
}
stop_proc() { # name
  stop "$1"
  case $1 in
    haproxy) wait_free "$PORT_HAPROXY" ;; haproxy-jwt) wait_free "$PORT_HAPROXY_JWT" ;;
    nginx) wait_free "$PORT_NGINX" ;; scopegate) wait_free "$PORT_GW"; wait_free "$PORT_ADMIN" ;;
  esac
}

start upstream "$PIN_L" nginx -p "$RUN/up" -c "$RUN/up.conf" -g "'daemon off;'"
wait_http upstream "http://127.0.0.1:$PORT_UP/" 200
echo "scopegate-load: PIN_MODE=$PIN_MODE workers=$WORKERS wrk -t$THREADS -c$CONNS ${DURATION}s × $ROUNDS rounds; idle N: ${IDLE_NS[*]:-off}; $(nproc) CPUs; $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1 | cut -d' ' -f3); scopegate $("$BIN" --version 2>/dev/null | head -1 || echo '?')"

# ------------------------------------------------------------------------------ idle phase ---
# RSS growth of a freshly started proxy while N keep-alive connections sit idle on it (one
# request served on each), before any load so allocator reuse cannot hide it.
printf 'target\tn\topened\tok\talive\trss_before_kib\trss_idle_kib\tbytes_per_conn\n' >"$RUN/idle.tsv"
for n in "${IDLE_NS[@]}"; do
  for t in $TARGETS; do
    [ "$t" = direct ] && continue
    p=${PROC[$t]}
    start_proc "$p" "$(conn_limit "$n")"
    pid=${PID_OF[$p]}
    sleep 0.5
    before=$(rss_kib "$pid")
    out=$RUN/idle.$t.$n
    $PIN_L python3 "$HERE/idle_conns.py" "${PORTS[$t]}" "$n" "$IDLE_HOLD" "$(path_of "$t")" "Bearer $TOKEN" >"$out" 2>"$out.err" &
    IDLE_PID=$!
    for _ in $(seq 1 900); do
      grep -q '^ready' "$out" 2>/dev/null && break
      kill -0 "$IDLE_PID" 2>/dev/null || break
      sleep 0.1
    done
    sleep 1
    after=$(rss_kib "$pid")
    wait "$IDLE_PID" || true
    IDLE_PID=""
    read -r _ opened ok < <(grep '^ready' "$out" || echo "ready 0 0")
    read -r _ alive < <(grep '^alive' "$out" || echo "alive 0")
    per=$(awk -v a="$before" -v b="$after" -v n="$opened" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "NA" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "$opened" "$ok" "$alive" "$before" "$after" "$per" >>"$RUN/idle.tsv"
    flag=""; if [ "$opened" != "$n" ] || [ "$ok" != "$n" ] || [ "$alive" != "$n" ]; then flag="  !! not all held (see $out.err)"; fi
    printf 'idle %-17s N=%-6s opened %s, 2xx %s, still open %s; RSS %s -> %s KiB = %s B/conn%s\n' \
      "$t" "$n" "$opened" "$ok" "$alive" "$before" "$after" "$per" "$flag"
    stop_proc "$p"
  done
done

# ------------------------------------------------------------------------------ auth check ---
for p in haproxy nginx haproxy-jwt scopegate; do
  for t in $TARGETS; do
    if [ "${PROC[$t]:-}" = "$p" ]; then start_proc "$p" "$(conn_limit "$CONNS")"; break; fi
  done
done

# A benchmark of a gateway that lets bad tokens through would measure nothing.
mint() { # exp_in_seconds|noexp scope [signed_scope]: HS256 with the key's secret and kid;
         # with signed_scope the signature is over that scope, then the payload is swapped
  python3 - "$KID" "$SECRET" "$@" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
enc = lambda o: b64(json.dumps(o, separators=(",", ":")).encode())
kid, secret, exp_in, scope = sys.argv[1:5]
signed_scope = sys.argv[5] if len(sys.argv) > 5 else scope
now = int(time.time())
claims = {"act": {}, "aud": "gateway", "iat": now - 60, "scope": signed_scope}
if exp_in != "noexp":
    claims["exp"] = now + int(exp_in)
head = enc({"alg": "HS256", "kid": kid})
sig = b64(hmac.new(secret.encode(), f"{head}.{enc(claims)}".encode(), hashlib.sha256).digest())
claims["scope"] = scope
print(f"{head}.{enc(claims)}.{sig}")
PY
}
OTHER=$("$BIN" tokens generate --key "$KID" --secret "sbsec_not-the-secret-not-the-secret-not-the" --audience gateway --scope "$SCOPE")
MINTED=$(mint 3600 "$SCOPE state.write")
TAMPERED=$(mint 3600 "$SCOPE state.write" "state.write")
EXPIRED=$(mint -3600 "$SCOPE")
NOEXP=$(mint noexp "$SCOPE")
NONE="$(printf '{"alg":"none","kid":"%s"}' "$KID" | base64 -w0 | tr '+/' '-_' | tr -d '=').$(echo "$TOKEN" | cut -d. -f2)."
NOSCOPE=$("$BIN" tokens generate --key "$KID" --secret "$SECRET" --audience gateway --scope "state.write")
PREFIX=$(mint 3600 "${SCOPE}only state.write")
check() { # port path name want [curl args…]
  local got
  got=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "${@:5}" "http://127.0.0.1:$1$2")
  printf '  %-26s want %s got %s\n' "$3" "$4" "$got"
  [ "$got" = "$4" ] || { echo "auth check failed on port $1: $3" >&2; exit 1; }
}
authcheck() { # target
  local port=${PORTS[$1]}
  echo "auth check ($1):"
  check "$port" /v1/state "valid token (CLI)" 200 -H "$AUTH"
  check "$port" /v1/state "valid token (minted here)" 200 -H "authorization: Bearer $MINTED"
  check "$port" /v1/state "no token" 401
  check "$port" /v1/state "malformed bearer" 401 -H "authorization: Bearer not.a.jwt"
  check "$port" /v1/state "bad signature" 401 -H "authorization: Bearer $OTHER"
  check "$port" /v1/state "tampered payload" 401 -H "authorization: Bearer $TAMPERED"
  check "$port" /v1/state "alg none" 401 -H "authorization: Bearer $NONE"
  check "$port" /v1/state "expired" 401 -H "authorization: Bearer $EXPIRED"
  check "$port" /v1/state "no exp claim" 401 -H "authorization: Bearer $NOEXP"
  check "$port" /v1/state "missing scope" 403 -H "authorization: Bearer $NOSCOPE"
  check "$port" /v1/state "scope only as a prefix" 403 -H "authorization: Bearer $PREFIX"
}
for t in $TARGETS; do
  case $t in
    haproxy-jwt | scopegate) authcheck "$t" ;;
    scopegate-noauth) echo "public route (scopegate-noauth):"; check "$PORT_GW" /v1/public "no token" 200 ;;
    *) check "${PORTS[$t]}" /v1/state "$t answers" 200 -H "$AUTH" ;;
  esac
done

# ------------------------------------------------------------------------------------ load ---
url_of() { echo "http://127.0.0.1:${PORTS[$1]}$(path_of "$1")"; }
if [ "$WARMUP" -gt 0 ]; then
  for t in $TARGETS; do $PIN_L wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -H "$AUTH" "$(url_of "$t")" >/dev/null; done
fi
printf 'round\ttarget\trps\trequests\tp50\tp99\tnon2xx\tsock_err\tcpu_us_per_req\trss_kib\tforeign_cpu_pct\n' >"$RUN/samples.tsv"
UP_PID=${PID_OF[upstream]}
TIMEFORMAT='%U %S'
for r in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    raw=$RUN/raw/$t.r$r.wrk
    pid=""; if [ "$t" != direct ]; then pid=${PID_OF[${PROC[$t]}]}; fi
    c0=0; if [ -n "$pid" ]; then c0=$(cpu_ticks "$pid"); fi
    u0=$(cpu_ticks "$UP_PID"); s0=$(sys_busy); t0=$(date +%s.%N)
    { time $PIN_L wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "$(url_of "$t")" >"$raw" 2>"$raw.err"; } 2>"$RUN/wrk.time"
    c1=0; if [ -n "$pid" ]; then c1=$(cpu_ticks "$pid"); fi
    u1=$(cpu_ticks "$UP_PID"); s1=$(sys_busy); t1=$(date +%s.%N)
    # CPU used during the run by anything but wrk, the upstream and the target (other users of
    # the machine), as % of all CPUs: a noise indicator.
    foreign=$(awk -v s=$((s1 - s0)) -v u=$((u1 - u0)) -v c=$((c1 - c0)) -v hz="$HZ" -v t0="$t0" -v t1="$t1" \
      -v n="$(nproc)" -v w="$(cat "$RUN/wrk.time")" \
      'BEGIN { split(w, x, " "); f = (s - u - c) / hz - x[1] - x[2]; if (f < 0) f = 0; printf "%.0f", 100 * f / ((t1 - t0) * n) }')
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$raw")
    reqs=$(awk '/requests in/ {print $1}' "$raw")
    p50=$(awk '$1 == "50%" {print $2}' "$raw")
    p99=$(awk '$1 == "99%" {print $2}' "$raw")
    non2xx=$(awk -F': *' '/Non-2xx/ {print $2}' "$raw")
    serr=$(awk '/Socket errors/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$raw")
    cpu=NA; rss=NA
    if [ -n "$pid" ]; then
      cpu=$(awk -v d=$((c1 - c0)) -v n="${reqs:-0}" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.2f", d / hz * 1e6 / n; else print "NA" }')
      rss=$(rss_kib "$pid")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "${rps:-NA}" "${reqs:-0}" "${p50:-NA}" "${p99:-NA}" \
      "${non2xx:-0}" "${serr:-0}" "$cpu" "$rss" "$foreign" >>"$RUN/samples.tsv"
    printf 'round %s %-17s %10s req/s  p50 %-8s p99 %-8s cpu %6s µs/req  rss %s KiB  non-2xx %s  sock err %s  other CPU %s%%\n' \
      "$r" "$t" "${rps:-NA}" "${p50:-NA}" "${p99:-NA}" "$cpu" "$rss" "${non2xx:-0}" "${serr:-0}" "$foreign"
  done
done

python3 - "$RUN/samples.tsv" "$RUN/idle.tsv" "$PIN_MODE" "$WORKERS" "$CONNS" "$DURATION" "${IDLE_NS[*]}" <<'PY'
import csv, statistics, sys
samples, idle_tsv, mode, workers, conns, duration, idle_ns = sys.argv[1:8]
idle_ns = idle_ns.split()

def ms(v):
    v = v.strip()
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float("nan")

def num(v):
    try:
        return float(v)
    except ValueError:
        return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

rows = list(csv.DictReader(open(samples), delimiter="\t"))
order, by = [], {}
for row in rows:
    if row["target"] not in by:
        order.append(row["target"])
    by.setdefault(row["target"], []).append(row)
idle = {(r["target"], r["n"]): r for r in csv.DictReader(open(idle_tsv), delimiter="\t")}

rps = {t: med(num(r["rps"]) for r in rs) for t, rs in by.items()}
rounds = len(next(iter(by.values()), []))

def ratio(t, base):
    return f"{rps[t] / rps[base]:.2f}" if base in rps and rps.get(t) and rps[base] else "NA"

def fmt(v, spec):
    return "NA" if v is None else format(v, spec)

head = ["target", "req/s (median)", "× direct", "× haproxy", "p50 ms", "p99 ms", "CPU µs/req"]
head += [f"idle B/conn @{n}" for n in idle_ns] + ["RSS after load KiB", "non-2xx"]
print(f"\n{mode}: {workers} worker(s) per proxy, wrk {conns} conns, {duration} s × {rounds} rounds; "
      "medians over rounds, non-2xx summed")
print("| " + " | ".join(head) + " |")
print("|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|")
sock_err = 0
for t in order:
    rs = by[t]
    cells = [t, fmt(rps[t], ",.0f"), ratio(t, "direct"), ratio(t, "haproxy"),
             fmt(med(ms(r["p50"]) for r in rs), ".2f"), fmt(med(ms(r["p99"]) for r in rs), ".2f"),
             fmt(med(num(r["cpu_us_per_req"]) for r in rs), ".1f")]
    for n in idle_ns:
        i = idle.get((t, n))
        if i is None:
            cells.append("NA")
        else:
            held = i["opened"] == i["ok"] == i["alive"] == n
            cells.append(i["bytes_per_conn"] + ("" if held else " (!)"))
    cells.append(rs[-1]["rss_kib"])
    cells.append(str(sum(int(r["non2xx"]) for r in rs)))
    sock_err += sum(int(r["sock_err"]) for r in rs)
    print("| " + " | ".join(cells) + " |")
notes = []
if "scopegate" in by and "scopegate-noauth" in by:
    notes.append("scopegate and scopegate-noauth share one process in the load phase (so one RSS, read after "
                 "each target's run)" + ("; the idle columns come from a fresh process per target and N" if idle_ns else ""))
if any(i["opened"] != i["n"] or i["ok"] != i["n"] or i["alive"] != i["n"] for i in idle.values()):
    notes.append("(!) = not every idle connection was opened, answered 2xx and still open when measured")
foreign = med(num(r["foreign_cpu_pct"]) for rs in by.values() for r in rs)
if foreign is not None and foreign >= 5:
    notes.append(f"other processes on this machine used {foreign:.0f}% of all CPUs during the wrk runs (median): "
                 "the numbers are noisy, rerun on a quiet machine")
if sock_err:
    notes.append(f"wrk reported {sock_err} socket errors in total (see the round lines)")
for n in notes:
    print(f"\n{n}")
PY
OK_EXIT=1
if [ -n "$KEEP_RUN" ]; then echo "samples: $RUN/samples.tsv  idle: $RUN/idle.tsv"; fi
