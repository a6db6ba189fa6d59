#!/usr/bin/env bash
# benches/load/run.sh — scopegate next to the proxies users would otherwise pick, same machine,
# same run: direct-to-upstream, HAProxy (no auth), nginx proxy_pass (no auth), and scopegate
# verifying an HS256 token and checking a scope on every request.
#
# What it does, all on 127.0.0.1, every run bounded by wrk's -d:
#   1. installs nginx, haproxy and wrk from Debian if they are missing (needs root + apt);
#   2. starts an nginx upstream answering "ok", the peers, and ./target/release/scopegate;
#   3. checks that scopegate refuses bad tokens (bad signature, expired, alg none, missing
#      scope) before loading it;
#   4. runs ROUNDS rounds of wrk, alternating targets (A B C A B C …), and prints medians of
#      requests/s and p99 latency with ratios against direct.
#
# PIN_MODE=split (default): each proxy pinned alone to CPU 0 with one worker; upstream and wrk
# on CPU 1 — "can it keep up on one core". PIN_MODE=shared: nothing pinned.
#
# Usage: cargo build --release && benches/load/run.sh
#        ROUNDS=3 DURATION=5 CONNS=64 benches/load/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PIN_MODE=${PIN_MODE:-split}
BIN=${BIN:-./target/release/scopegate}
PORT_UP=${PORT_UP:-28580}
PORT_HAPROXY=${PORT_HAPROXY:-28581}
PORT_NGINX=${PORT_NGINX:-28582}
PORT_GW=${PORT_GW:-28583}
PORT_ADMIN=${PORT_ADMIN:-28584}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
  else
    echo "install nginx, haproxy and wrk first (Debian: apt-get install nginx haproxy wrk)" >&2; exit 1
  fi
fi
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

RUN=$(mktemp -d /tmp/scopegate-load.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if [ "$PIN_MODE" = split ]; then PIN_T="taskset -c 0"; PIN_L="taskset -c 1"; WORKERS=1; else PIN_T=""; PIN_L=""; WORKERS=2; fi

start() { # name, command…  (own process group, so cleanup ends its children too)
  local name=$1; shift
  setsid bash -c "exec $*" >"$RUN/$name.log" 2>&1 &
  PIDS+=("$!")
}
wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# Upstream: nginx answering 200 "ok".
mkdir -p "$RUN/up"
cat >"$RUN/up.conf" <<NGX
worker_processes 1; pid $RUN/up.pid; error_log $RUN/up-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$PORT_UP; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
NGX
start upstream $PIN_L nginx -p "$RUN/up" -c "$RUN/up.conf" -g "'daemon off;'"

cat >"$RUN/haproxy.cfg" <<HAP
global
  nbthread $WORKERS
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$PORT_HAPROXY
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$PORT_UP
HAP
start haproxy $PIN_T haproxy -db -f "$RUN/haproxy.cfg"

mkdir -p "$RUN/nginx"
cat >"$RUN/nginx.conf" <<NGX
worker_processes $WORKERS; pid $RUN/nginx.pid; error_log $RUN/nginx-error.log;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$PORT_UP; keepalive 128; }
  server { listen 127.0.0.1:$PORT_NGINX; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
start nginx $PIN_T nginx -p "$RUN/nginx" -c "$RUN/nginx.conf" -g "'daemon off;'"

# scopegate: one route requiring state.read, a production key, a token narrowed by scope.
cat >"$RUN/scopegate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT_GW"
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
scopes = ["state.read"]
upstream = "up"
TOML
ORG=$("$BIN" --config "$RUN/scopegate.toml" --json orgs create --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
KEY_JSON=$("$BIN" --config "$RUN/scopegate.toml" --json keys create --org "$ORG" --use production --name bench 2>/dev/null)
KID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$KEY_JSON")
SECRET=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$KEY_JSON")
TOKEN=$("$BIN" --config "$RUN/scopegate.toml" tokens generate --key "$KID" --secret "$SECRET" --audience gateway --scope "state.read state.write" --expires-in 2h)
start scopegate $PIN_T env SCOPEGATE_WORKERS=$WORKERS SCOPEGATE_LOG=${SCOPEGATE_LOG:-info} "$BIN" serve --config "$RUN/scopegate.toml"
wait_port "$PORT_UP"; wait_port "$PORT_HAPROXY"; wait_port "$PORT_NGINX"
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT_ADMIN/readyz" && break; sleep 0.1; done

# Auth check: a benchmark of a gateway that lets bad tokens through would measure nothing.
code() { curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$PORT_GW/v1/state"; }
OTHER=$("$BIN" tokens generate --key "$KID" --secret "sbsec_not-the-secret-not-the-secret-not-the" --audience gateway)
EXPIRED=$(python3 - "$KID" "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
kid, secret = sys.argv[1], sys.argv[2]
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
body = b64(json.dumps({"act": {}, "aud": "gateway", "iat": now - 7200, "exp": now - 3600, "scope": "state.read"}).encode())
sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)
NONE="$(printf '{"alg":"none","kid":"%s"}' "$KID" | base64 -w0 | tr '+/' '-_' | tr -d '=').$(echo "$TOKEN" | cut -d. -f2)."
NOSCOPE=$("$BIN" tokens generate --key "$KID" --secret "$SECRET" --audience gateway --scope "state.write")
check() { local got; got=$(code "${@:3}"); printf '  %-22s want %s got %s\n' "$1" "$2" "$got"; [ "$got" = "$2" ] || { echo "auth check failed" >&2; exit 1; }; }
echo "auth check (scopegate):"
check "valid token" 200 -H "authorization: Bearer $TOKEN"
check "no token" 401
check "bad signature" 401 -H "authorization: Bearer $OTHER"
check "alg none" 401 -H "authorization: Bearer $NONE"
check "missing scope" 403 -H "authorization: Bearer $NOSCOPE"
check "expired" 401 -H "authorization: Bearer $EXPIRED"

declare -A PORTS=([direct]=$PORT_UP [haproxy]=$PORT_HAPROXY [nginx]=$PORT_NGINX [scopegate]=$PORT_GW)
TARGETS=${TARGETS:-direct haproxy nginx scopegate}
: >"$RUN/samples.tsv"
for t in $TARGETS; do $PIN_L wrk -t1 -c"$CONNS" -d2s -H "authorization: Bearer $TOKEN" "http://127.0.0.1:${PORTS[$t]}/v1/state" >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do
    out=$($PIN_L wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "authorization: Bearer $TOKEN" "http://127.0.0.1:${PORTS[$t]}/v1/state")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$p99" "${non2xx:-0}" >>"$RUN/samples.tsv"
    printf 'round %s %-10s %10s req/s  p99 %s\n' "$r" "$t" "$rps" "$p99"
  done
done
python3 - "$RUN/samples.tsv" "$PIN_MODE" "$CONNS" "$DURATION" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
def ms(v):
    v = v.strip()
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float("nan")
by = {}
for r, t, rps, p99, bad in rows:
    by.setdefault(t, []).append((float(rps), ms(p99), int(bad)))
direct = statistics.median(x[0] for x in by["direct"])
print(f"\n| target | req/s (median) | × direct | p99 ms (median) | non-2xx |  ({sys.argv[2]}, {sys.argv[3]} conns, {sys.argv[4]} s × {len(by['direct'])} rounds)")
print("| --- | ---: | ---: | ---: | ---: |")
for t, xs in by.items():
    m = statistics.median(x[0] for x in xs)
    print(f"| {t} | {m:,.0f} | {m / direct:.2f} | {statistics.median(x[1] for x in xs):.2f} | {sum(x[2] for x in xs)} |")
PY
echo "samples: $RUN/samples.tsv"
