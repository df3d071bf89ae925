"""Parses Prometheus text exposition from stdin with the Prometheus project's own parser and prints every sample
as JSON lines: {"family", "type", "name", "labels", "value"}. Fails (non-zero) on text the parser rejects."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"family": family.name, "type": family.type, "name": sample.name,
                          "labels": sample.labels, "value": sample.value}))
