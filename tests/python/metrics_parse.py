"""Parses Prometheus text exposition from stdin with the Prometheus project's own parser
(prometheus_client) and prints every sample as JSON: one object per line with its name,
labels and value. tests/metrics.rs asserts on what it prints, so writ's output is checked
by an independent parser, not by the encoder that wrote it."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            print(
                json.dumps(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": sample.name,
                        "labels": sample.labels,
                        "value": sample.value,
                    }
                )
            )


if __name__ == "__main__":
    main()
