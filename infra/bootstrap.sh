#!/usr/bin/env bash
# Installs the system tools the runbook drills and console tests use (jq, curl, openssl, chromium: Debian packages,
# when missing), builds the web console (console/dist, which the console function embeds), the Python
# tools Keel's tests and local tooling need into a git-ignored virtualenv at the repo root
# (.venv), and the Node packages of tests/sdk (the official OpenFeature Node SDK) into its git-ignored
# node_modules. Idempotent: run it again at any time; it only installs what infra/requirements.txt and
# tests/sdk/package-lock.json pin.
#
#   bash infra/bootstrap.sh
#
# Environment: PYTHON (default python3) picks the interpreter used to create the virtualenv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
requirements="$repo_root/infra/requirements.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "bootstrap: $python not found; install Python 3.9 or newer (or set PYTHON)" >&2
    exit 1
fi

# System tools the runbooks' drills run (infra/local/tests/host/runbooks.rs) and the browser the console's tests
# drive (infra/local/tests/host/console.rs), from Debian's packages when missing (each command is its package).
missing=()
for tool in jq curl openssl chromium; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: ${missing[*]} not found and apt-get is not there to install them" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]} from Debian's packages"
    sudo_if_needed=()
    [ "$(id -u)" -eq 0 ] || sudo_if_needed=(sudo)
    "${sudo_if_needed[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_if_needed[@]}" apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv"
    "$python" -m venv "$venv"
fi

echo "bootstrap: installing $(grep -cvE '^\s*(#|$)' "$requirements") pinned requirement(s) from infra/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

# Fail loudly if the tools the tests start are not there after all.
for tool in moto_server; do
    if [ ! -x "$venv/bin/$tool" ]; then
        echo "bootstrap: $tool is missing from $venv/bin after installation" >&2
        exit 1
    fi
done

if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm not found; install Node.js 20 or newer (the OpenFeature Node SDK and EventSource tests need it)" >&2
    exit 1
fi
echo "bootstrap: installing tests/sdk's Node packages from its package-lock.json"
npm ci --prefix "$repo_root/tests/sdk" --no-audit --no-fund --loglevel=error

echo "bootstrap: installing console/'s Node packages from its package-lock.json, and building the console"
npm ci --prefix "$repo_root/console" --no-audit --no-fund --loglevel=error
npm --prefix "$repo_root/console" run --silent build

echo "bootstrap: done; tools are in $venv/bin, tests/sdk/node_modules and console/node_modules; the console is in console/dist"
