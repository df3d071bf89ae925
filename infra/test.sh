#!/usr/bin/env bash
# Every check and test Keel has, from a fresh clone: provisions its own tools (the AWS emulator and the template
# linters go into the git-ignored .venv), then formatting, lints, the template linters, and the whole test suite
# (unit, contract tests against the embedded adapters and against moto, end-to-end tests against keel-local).
# It fails loudly when anything is missing; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash infra/bootstrap.sh

# Published test vectors and specifications live beside the repo, not in it.
export KEEL_FIXTURES_DIR="${KEEL_FIXTURES_DIR:-$(cd .. && pwd)/shared/fixtures}"
if [ ! -d "$KEEL_FIXTURES_DIR" ]; then
  echo "test fixtures not found at $KEEL_FIXTURES_DIR (set KEEL_FIXTURES_DIR)" >&2
  exit 1
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== template linters"
bash infra/lint.sh
echo "== tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast
