#!/usr/bin/env bash
# Runs every measurement in BENCHMARKS.md and prints a summary:
#   1. cold start of the three webhook Lambdas (and a trivial lambda_runtime peer) against a stub Runtime API;
#   2. release zip and binary sizes, as `cargo lambda build --release --arm64 --output-format zip` makes them;
#   3. ingest handler CPU per 1 KiB webhook (criterion, backends replaced by no-op adapters);
#   4. keel-local (embedded backend) under a bounded loopback load: /health/live, duplicate and unique webhooks.
#
#   bash infra/bench.sh
#
# Bounded: every step runs under `timeout`; loads send a fixed number of requests with a time cap, to 127.0.0.1 only.
# Knobs (environment): RUNS (cold-start runs per binary, 50), REQUESTS (measured requests per load mode, 5000),
# CONCURRENCY (16), SKIP_ZIP=1 (skip the cross-compiled zip build, the slowest step), ZIP_ARCH (arm64 or x86-64;
# default arm64, falling back to x86-64 when the aarch64 target cannot be installed).
# Logs and raw results go to target/bench/. Needs the repo's .venv for cargo-lambda (bash infra/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=target/bench
mkdir -p "$out"
RUNS=${RUNS:-50}
REQUESTS=${REQUESTS:-5000}
CONCURRENCY=${CONCURRENCY:-16}
FUNCTIONS=(webhook-ingest webhook-worker webhook-ops)
step() { echo; echo "== $*"; }

step "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "rustc: $(rustc --version)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

step "release build (functions, bench tools, local host)"
timeout 3600 cargo build --release --locked -p webhook-ingest -p webhook-worker -p webhook-ops -p keel-bench -p keel-local

step "1. cold start: spawn -> first GET /2018-06-01/runtime/invocation/next ($RUNS runs each)"
timeout 900 target/release/cold-start --runs "$RUNS" --peer target/release/hello \
    "${FUNCTIONS[@]/#/target/release/}" | tee "$out/cold-start.txt"
echo "-- the same, with rustls-native-certs reading one CA bundle (SSL_CERT_FILE), as on Lambda's images:"
timeout 900 target/release/cold-start --runs "$RUNS" --peer target/release/hello \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    "${FUNCTIONS[@]/#/target/release/}" | tee "$out/cold-start-bundle.txt"

step "2. release zip sizes (cargo lambda)"
: >"$out/sizes.txt"
if [ "${SKIP_ZIP:-0}" = 1 ]; then
    echo "skipped (SKIP_ZIP=1)"
else
    arch=${ZIP_ARCH:-arm64}
    if [ "$arch" = arm64 ] && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
        rustup target add aarch64-unknown-linux-gnu || arch=x86-64
    fi
    triple=$([ "$arch" = arm64 ] && echo aarch64-unknown-linux-gnu || echo x86_64-unknown-linux-gnu)
    [ -x .venv/bin/cargo-lambda ] || bash infra/bootstrap.sh
    PATH="$root/.venv/bin:$PATH" timeout 3600 cargo lambda build --release "--$arch" --output-format zip \
        -p webhook-ingest -p webhook-worker -p webhook-ops
    for f in "${FUNCTIONS[@]}"; do
        printf '%-16s %-9s binary %9d B  zip %9d B\n' "$f" "$arch" \
            "$(stat -c %s "target/$triple/release/$f")" "$(stat -c %s "target/lambda/$f/bootstrap.zip")"
    done | tee "$out/sizes.txt"
fi

step "3. ingest handler CPU (criterion)"
timeout 1800 cargo bench --locked -p webhook-ingest --bench ingest -- --warm-up-time 2 --measurement-time 5 \
    >"$out/criterion.txt" 2>&1 || { tail -30 "$out/criterion.txt"; exit 1; }
grep -E "time:" -B1 "$out/criterion.txt" | grep -vE "^--$" || true

step "4. keel-local, embedded backend, loopback load (REQUESTS=$REQUESTS per mode, concurrency $CONCURRENCY)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data_dir=$(mktemp -d)
WEBHOOK_SECRET_ACME=bench-secret target/release/keel-local serve --port "$port" --data-dir "$data_dir" \
    --backend embedded >"$out/host.log" 2>&1 &
host_pid=$!
cleanup() { kill "$host_pid" 2>/dev/null || true; wait "$host_pid" 2>/dev/null || true; rm -rf "$data_dir"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 && break
    kill -0 "$host_pid" 2>/dev/null || { tail -20 "$out/host.log"; exit 1; }
    sleep 0.2
done
load() { timeout 300 target/release/load --url "http://127.0.0.1:$port" --requests "$REQUESTS" \
    --concurrency "$CONCURRENCY" --max-seconds 120 "$@"; }
{
    load --mode get --path /health/live
    load --mode duplicate --path /webhooks/acme
    load --mode unique --path /webhooks/acme
} | tee "$out/load.txt"
cleanup
trap - EXIT

step "summary"
python3 - "$out" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
print(open(os.path.join(out, "machine.txt")).read().strip())
print("\ncold start (target <= 20 ms), median / p90 in ms:")
for name in ("cold-start.txt", "cold-start-bundle.txt"):
    for line in open(os.path.join(out, name)):
        cols = line.split()
        if len(cols) >= 5 and cols[0] in ("hello", "webhook-ingest", "webhook-worker", "webhook-ops"):
            tag = " (one CA bundle)" if "bundle" in name else ""
            print(f"  {cols[0] + tag:<36} {cols[2]:>7} / {cols[3]:>7}  {cols[5] if len(cols) > 5 else ''}")
sizes = open(os.path.join(out, "sizes.txt")).read().strip()
print("\nsizes (target: zip <= 8 MB):\n" + ("\n".join("  " + l for l in sizes.splitlines()) if sizes else "  skipped"))
print("\ningest CPU per request, criterion median (target <= 50 us for 1 KiB):")
root = "target/criterion"
for group in ("ingest_call", "verify_keel"):
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir):
        continue
    for bench in sorted(os.listdir(gdir)):
        est = os.path.join(gdir, bench, "new", "estimates.json")
        if os.path.exists(est):
            median = json.load(open(est))["median"]["point_estimate"]
            print(f"  {group}/{bench:<28} {median / 1000:8.2f} us")
print("\nkeel-local, embedded backend:")
for line in open(os.path.join(out, "load.txt")):
    if line.startswith("RESULT"):
        print("  " + line[len("RESULT "):].strip())
EOF
