"""Writes the monitoring component's PrometheusRule from ticketune-rules.yaml, the rules' one source.

Run it after editing the rules: python deploy/prometheus/make_prometheusrule.py (tests/test_deploy.py
fails while the two differ).
"""

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "ticketune-rules.yaml"
TARGET = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/ticketune-rules.yaml by deploy/prometheus/make_prometheusrule.py:
# edit the rules there, then run the script.
"""


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL expressions) as literal blocks, as the rules file has them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _string)


def prometheus_rule() -> dict:
    """The PrometheusRule object (monitoring.coreos.com/v1) whose spec is the plain rules file."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ticketune"},
        "spec": yaml.safe_load(RULES.read_text(encoding="utf-8")),
    }


if __name__ == "__main__":
    text = yaml.dump(prometheus_rule(), Dumper=_BlockDumper, sort_keys=False, width=120)
    TARGET.write_text(HEADER + text, encoding="utf-8")
    print(f"wrote {TARGET}")
