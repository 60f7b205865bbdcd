"""Parses an OpenMetrics page (stdin) with Prometheus' own Python parser
(prometheus_client.openmetrics.parser) and prints every sample as JSON:
[{"family": NAME, "type": TYPE, "name": SAMPLE, "labels": {...}, "value": V}].
A page the parser refuses exits non-zero with its error. Used by
tests/tests/health.rs."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
