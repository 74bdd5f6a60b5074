"""Write kubernetes/monitoring/prometheusrule.yaml from monitoring/ckpt-janitor.rules.yml.

The PrometheusRule (Prometheus Operator) must carry exactly the groups of the plain rules file,
so it is generated, never edited: the rules file's `groups:` block, comments included, indented
under `spec:`. Text, not a YAML round trip, so the comments and folded descriptions survive as
written and the output is byte-stable (the tests regenerate it and compare).

    python3 monitoring/render_prometheusrule.py           # rewrite the PrometheusRule
    python3 monitoring/render_prometheusrule.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "monitoring" / "ckpt-janitor.rules.yml"
TARGET = REPO / "kubernetes" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from monitoring/ckpt-janitor.rules.yml by monitoring/render_prometheusrule.py:
# edit the rules file and run the script, never this file (tests/test_monitoring.py checks).
# The ckpt-janitor alerts for the Prometheus Operator: kubectl apply -k kubernetes/monitoring
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ckpt-janitor
  labels:
    app.kubernetes.io/name: ckpt-janitor
    app.kubernetes.io/component: alerting
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule holding the `groups:` block of `rules_text` (from that line on)."""
    lines = rules_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("groups:")]
    if len(starts) != 1:
        raise ValueError(f"{RULES.name} must have exactly one top-level `groups:` line")
    body = [f"  {line}" if line.strip() else "" for line in lines[starts[0]:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(RULES.read_text())
    if argv == ["--check"]:
        if TARGET.exists() and TARGET.read_text() == wanted:
            return 0
        print(f"render_prometheusrule: {TARGET.relative_to(REPO)} is out of date with "
              f"{RULES.relative_to(REPO)}; run python3 monitoring/render_prometheusrule.py",
              file=sys.stderr)
        return 1
    if argv:
        print("render_prometheusrule: usage: render_prometheusrule.py [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
