#!/usr/bin/env bash
# Instructions per call of one criterion benchmark, under callgrind: load-independent, so two engines (or two
# builds of one) can be compared on a busy machine. Counts everything inside criterion's timing loops, the loop's
# own overhead (~27 instructions) included; divide by the number of calls criterion made.
#
#   cargo bench -p keel-bench --bench flags --no-run
#   bash infra/bench/callgrind.sh target/release/deps/flags-<hash> 'flags/variants/keel_is_enabled$'
set -euo pipefail
bin=$1
id=$2
out=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='criterion::bencher::Bencher<M>::iter*' \
    "$bin" --bench --profile-time 1 "$id" >/dev/null 2>&1
total=$(callgrind_annotate "$out" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
calls=$(callgrind_annotate --tree=caller "$out" | grep -F '< ' | grep -F 'Bencher<M>::iter' | head -1 |
    sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d ,)
rm -f "$out"
echo "$id: $total instructions in $calls calls, $((total / calls)) per call"
