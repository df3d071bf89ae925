"""Evaluates flags through the official OpenFeature Python SDK and its OFREP provider, as a Keel user would.

Reads {"base_url": ..., "calls": [{"token", "key", "type", "default"}]} on stdin and writes one
{"value", "reason", "variant", "error_code"} per call, in order, as JSON on stdout. The test that runs it
(tests/tests/flags_local.rs) decides what the answers must be.
"""

import json
import sys

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.ofrep import OFREPProvider

request = json.load(sys.stdin)
current = {"token": ""}
api.set_provider(
    OFREPProvider(request["base_url"], headers_factory=lambda: {"Authorization": "Bearer " + current["token"]})
)
client = api.get_client()
methods = {
    "boolean": client.get_boolean_details,
    "string": client.get_string_details,
    "integer": client.get_integer_details,
    "float": client.get_float_details,
    "object": client.get_object_details,
}
answers = []
for call in request["calls"]:
    current["token"] = call["token"]
    # The targeting key is sent, as SDK users do; Keel takes the user from the token.
    details = methods[call["type"]](call["key"], call["default"], EvaluationContext(targeting_key="sdk-user"))
    answers.append(
        {
            "value": details.value,
            "reason": str(details.reason.value) if hasattr(details.reason, "value") else details.reason,
            "variant": details.variant,
            "error_code": details.error_code.value if details.error_code else None,
        }
    )
json.dump(answers, sys.stdout)
