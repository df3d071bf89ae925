#!/usr/bin/env bash
# Lints the SAM template: cfn-lint (with the SAM transform applied), `sam validate --lint`, and a check of every IAM
# action. All must be clean: warnings fail too, and no rule is ignored (if one ever must be, ignore it by id in a
# .cfnlintrc with the reason). Needs no AWS account, credentials or network, only the tools infra/bootstrap.sh
# installs into .venv.
#
#   bash infra/lint.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

venv="$repo_root/.venv"
for tool in cfn-lint sam; do
    if [ ! -x "$venv/bin/$tool" ]; then
        echo "lint: $venv/bin/$tool is missing; run: bash infra/bootstrap.sh" >&2
        exit 1
    fi
done

# Offline and quiet: no telemetry, no credential lookups against an instance metadata service, and a region so
# nothing asks for one.
export SAM_CLI_TELEMETRY=0
export AWS_EC2_METADATA_DISABLED=true
export AWS_REGION="${AWS_REGION:-us-east-1}"

echo "lint: cfn-lint $("$venv/bin/cfn-lint" --version | awk '{print $2}') template.yaml"
"$venv/bin/cfn-lint" template.yaml

echo "lint: sam validate --lint"
"$venv/bin/sam" validate --lint --template-file template.yaml --region us-east-1

# cfn-lint's IAM action check (W3037) is skipped for templates with the SAM transform
# (https://github.com/aws/serverless-application-model/issues/3633), so check every IAM statement's actions here
# against the same service authorization data cfn-lint ships. A misspelt or non-existent action (for example
# dynamodb:TransactWriteItems, which IAM does not have) would otherwise deploy and silently grant nothing.
echo "lint: IAM actions"
"$venv/bin/python" - template.yaml <<'PY'
import fnmatch
import sys

from cfnlint.data import AdditionalSpecs
from cfnlint.decode import decode
from cfnlint.helpers import load_resource

path = sys.argv[1]
template, matches = decode(path)
if matches:
    sys.exit(f"{path}: cannot parse: {matches}")
services = load_resource(AdditionalSpecs, "Policies.json")
problems = []


def check(action, where):
    if not isinstance(action, str) or action == "*":
        return
    line = getattr(getattr(action, "start_mark", None), "line", -1) + 1
    service, _, permission = action.partition(":")
    known = services.get(service.lower(), {}).get("Actions", {})
    if not permission:
        problems.append(f"{path}:{line}: {action!r} is not of the form service:action ({where})")
    elif service.lower() not in services:
        problems.append(f"{path}:{line}: unknown IAM service {service!r} in {action!r} ({where})")
    elif "*" in permission or "?" in permission:
        if not fnmatch.filter(known, permission.lower()):
            problems.append(f"{path}:{line}: {action!r} matches no IAM action ({where})")
    elif permission.lower() not in known:
        problems.append(f"{path}:{line}: {action!r} is not an IAM action ({where})")


def walk(node, where):
    if isinstance(node, dict):
        statements = node.get("Statement")
        if isinstance(statements, list):
            for statement in statements:
                if isinstance(statement, dict):
                    for key in ("Action", "NotAction"):
                        actions = statement.get(key, [])
                        for action in actions if isinstance(actions, list) else [actions]:
                            check(action, where)
        for key, value in node.items():
            walk(value, where if where else key)
    elif isinstance(node, list):
        for value in node:
            walk(value, where)


for name, resource in (template.get("Resources") or {}).items():
    walk(resource, name)
if problems:
    sys.exit("\n".join(problems))
PY

echo "lint: ok"
