#!/usr/bin/env bash
# Runs every measurement in BENCHMARKS.md and prints a summary:
#   1. cold start of the three webhook Lambdas (and a trivial lambda_runtime peer) against a stub Runtime API;
#   2. release zip and binary sizes, as `cargo lambda build --release --arm64 --output-format zip` makes them;
#   3. ingest handler CPU per 1 KiB webhook (criterion, backends replaced by no-op adapters);
#   4. keel-local (embedded backend) under a bounded loopback load: /health/live, duplicate and unique webhooks,
#      with the data directory on disk and then on tmpfs;
#   5. feature-flag evaluation (criterion): Keel's engine against Unleash's yggdrasil on the same flags, 100 flags
#      for one context, and loading a snapshot of 1,000 flags.
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
step() {
    echo
    echo "== $*"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "rustc: $(rustc --version)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "${TMPDIR:-/tmp}" <<'PY'
import os, sys, tempfile, time
fd, path = tempfile.mkstemp(dir=sys.argv[1])
samples = []
for i in range(200):
    os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    samples.append(time.perf_counter() - t)
os.close(fd)
os.unlink(path)
samples.sort()
print("fdatasync of 4 KiB in %s: median %.3f ms, p90 %.3f ms" % (sys.argv[1], samples[100] * 1e3, samples[180] * 1e3))
PY
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
    if [ "$arch" = arm64 ]; then triple=aarch64-unknown-linux-gnu; else triple=x86_64-unknown-linux-gnu; fi
    [ -x .venv/bin/cargo-lambda ] || bash infra/bootstrap.sh
    PATH="$root/.venv/bin:$PATH" timeout 3600 cargo lambda build --release "--$arch" --output-format zip \
        -p webhook-ingest -p webhook-worker -p webhook-ops
    for f in "${FUNCTIONS[@]}"; do
        printf '%-16s %-7s binary %9d B  zip %9d B\n' "$f" "$arch" \
            "$(stat -c %s "target/$triple/release/$f")" "$(stat -c %s "target/lambda/$f/bootstrap.zip")"
    done | tee "$out/sizes.txt"
fi

step "3. ingest handler CPU (criterion)"
timeout 1800 cargo bench --locked -p webhook-ingest --bench ingest -- --warm-up-time 2 --measurement-time 5 \
    >"$out/criterion.txt" 2>&1 || {
    tail -30 "$out/criterion.txt"
    exit 1
}
grep -E "time:" -B1 "$out/criterion.txt" | grep -vE "^--$" || true

step "4. keel-local, embedded backend, loopback load (REQUESTS=$REQUESTS per mode, concurrency $CONCURRENCY)"
# The data directory on disk first (redb commits with fsync, as a developer runs it), then on tmpfs (/dev/shm, where
# fsync costs nothing): the difference is what durability costs.
host_pid=
data_dir=
cleanup() {
    if [ -n "$host_pid" ]; then
        kill "$host_pid" 2>/dev/null || true
        wait "$host_pid" 2>/dev/null || true
    fi
    if [ -n "$data_dir" ]; then rm -rf "$data_dir"; fi
    host_pid=
    data_dir=
}
host_load() { # label, parent directory of the data directory
    local label=$1 port mode
    port=$(free_port)
    data_dir=$(mktemp -d -p "$2")
    WEBHOOK_SECRET_ACME=bench-secret target/release/keel-local serve --port "$port" --data-dir "$data_dir" \
        --backend embedded >"$out/host-$label.log" 2>&1 &
    host_pid=$!
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 && break
        kill -0 "$host_pid" 2>/dev/null || {
            tail -20 "$out/host-$label.log"
            exit 1
        }
        sleep 0.2
    done
    echo "-- data directory on $label ($data_dir)"
    for mode in get duplicate unique; do
        path=/webhooks/acme
        [ "$mode" = get ] && path=/health/live
        timeout 300 target/release/load --url "http://127.0.0.1:$port" --mode "$mode" --path "$path" \
            --requests "$REQUESTS" --concurrency "$CONCURRENCY" --max-seconds 120 --host-pid "$host_pid" |
            sed "s/^RESULT /RESULT data=$label /"
        sleep 5 # let the worker drain what this mode queued before the next one is measured
    done
    cleanup
}
{
    trap cleanup EXIT # this group runs in a subshell (the pipe to tee): the trap must live here
    host_load disk "${TMPDIR:-/tmp}"
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then host_load tmpfs /dev/shm; fi
} | tee "$out/load.txt"

step "5. feature flags: Keel against yggdrasil (criterion)"
timeout 1800 cargo bench --locked -p keel-bench --bench flags -- --warm-up-time 1 --measurement-time 3 \
    >"$out/flags.txt" 2>&1 || {
    tail -30 "$out/flags.txt"
    exit 1
}
grep -E "time:" -B1 "$out/flags.txt" | grep -vE "^--$" || true

step "summary"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print(open(os.path.join(out, "machine.txt")).read().strip())
print("\ncold start (target <= 20 ms): median / p90 ms, median relative to hello")
for name in ("cold-start.txt", "cold-start-bundle.txt"):
    for line in open(os.path.join(out, name)):
        cols = line.split()
        if len(cols) >= 5 and cols[0] in ("hello", "webhook-ingest", "webhook-worker", "webhook-ops"):
            tag = " (one CA bundle)" if "bundle" in name else ""
            print(f"  {cols[0] + tag:<34} {cols[2]:>7} / {cols[3]:>7}  {cols[5] if len(cols) > 5 else ''}")
sizes = open(os.path.join(out, "sizes.txt")).read().strip()
print("\nsizes (target: zip <= 8 MB):")
print("\n".join("  " + l for l in sizes.splitlines()) if sizes else "  skipped")
print("\ningest CPU per request, criterion median (target <= 50 us per 1 KiB webhook):")
for group in ("ingest_call", "verify_keel"):
    gdir = os.path.join("target/criterion", group)
    if not os.path.isdir(gdir):
        continue
    for bench in sorted(os.listdir(gdir)):
        est = os.path.join(gdir, bench, "new", "estimates.json")
        if os.path.exists(est):
            median = json.load(open(est))["median"]["point_estimate"]
            print(f"  {group + '/' + bench:<40} {median / 1000:8.2f} us")
print("\nkeel-local, embedded backend (host_cpu_us_per_req: the host's CPU time per request, worker included):")
for line in open(os.path.join(out, "load.txt")):
    if line.startswith("RESULT"):
        print("  " + line[len("RESULT "):].strip())
print("\nfeature flags, criterion median (targets: 100 flags <= 10 us, 1,000-flag snapshot <= 10 ms):")
def median_ns(group, bench):
    est = os.path.join("target/criterion", group, bench, "new", "estimates.json")
    return json.load(open(est))["median"]["point_estimate"] if os.path.exists(est) else None
for scenario in ("no_rules", "one_constraint", "two_constraints", "rollout_50", "variants"):
    group = "flags_" + scenario
    keel, resolve, enabled = (median_ns(group, b) for b in ("keel", "yggdrasil_resolve", "yggdrasil_is_enabled"))
    if None in (keel, resolve, enabled):
        continue
    print(f"  {scenario:<16} keel {keel:7.1f} ns  yggdrasil resolve {resolve:7.1f} ns ({resolve / keel:4.1f}x)"
          f"  is_enabled {enabled:7.1f} ns ({enabled / keel:4.1f}x)")
for group, bench, unit, scale in (
    ("flags_bulk100", "keel", "us", 1e3),
    ("flags_bulk100", "yggdrasil_resolve_all", "us", 1e3),
    ("flags_bulk100", "yggdrasil_is_enabled_each", "us", 1e3),
    ("flags_snapshot1000", "parse_and_build", "ms", 1e6),
    ("flags_snapshot1000", "build", "ms", 1e6),
    ("flags_snapshot1000", "load_from_items", "ms", 1e6),
    ("flags_snapshot1000", "refresh_one_change", "us", 1e3),
):
    value = median_ns(group, bench)
    if value is not None:
        print(f"  {group[len('flags_'):] + '/' + bench:<40} {value / scale:8.2f} {unit}")
PY
