"""The alerting rules and the dashboard in monitoring/ are tested, not just written (issue 12,
point 4): promtool checks the rules and runs their unit tests (both sides of every alert), the
Prometheus Operator's PrometheusRule carries exactly the rules file's groups, the dashboard is
well-formed, and a real daemon exports every metric a rule or a panel queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.daemon import REPO, Spawn, publish_marker
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until
from prometheus_client.parser import text_string_to_metric_families

MONITORING = REPO / "monitoring"
RULES = MONITORING / "ckpt-janitor.rules.yml"
RULES_TEST = MONITORING / "ckpt-janitor.rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RENDER = MONITORING / "render_prometheusrule.py"
PROMETHEUS_RULE = REPO / "kubernetes" / "monitoring" / "prometheusrule.yaml"

ALERTS = {
    "CkptJanitorConsumerStalled", "CkptJanitorLagGrowing", "CkptJanitorRefusingDirectory",
    "CkptJanitorTrashNotDraining", "CkptJanitorFilesystemLowAndFalling", "CkptJanitorDown",
    "CkptJanitorLoopStalled", "CkptJanitorErrors", "CkptJanitorStandbyOnly",
}
SEVERITIES = {"critical", "warning", "info"}
# Metrics Prometheus makes itself, never exported by a target.
PROMETHEUS_OWN = {"up"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def _tool(name: str, install: str) -> str:
    """The path of `name`; missing, it fails the test in CI (CI=true) and skips it elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def promtool() -> str:
    return _tool("promtool", "apt-get install -y prometheus")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _groups_of_rules_file() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert isinstance(groups, list)
    return groups


def _groups_of_prometheusrule() -> list[dict[str, Any]]:
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    groups = document["spec"]["groups"]
    assert isinstance(groups, list)
    return groups


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups_of_rules_file() for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def _panel_exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"]]


# ---- metric names in PromQL --------------------------------------------------------------------

# Aggregation operators, keywords and literals that look like identifiers; functions are told
# apart by the "(" after them (listed too, for a call split over whitespace or a line).
PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear",
    "histogram_quantile", "time", "timestamp", "absent", "absent_over_time", "vector", "scalar",
    "min_over_time", "max_over_time", "avg_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "quantile_over_time", "changes", "resets", "clamp", "clamp_min",
    "clamp_max", "abs", "label_replace", "label_join", "sort", "sort_desc", "start", "end",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")  # label matchers (strings already emptied)
_RANGE = re.compile(r"\[[^\]]*\]")  # ranges and subqueries: durations, $__rate_interval
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)",
                         re.IGNORECASE)
# An identifier not glued to a number (`30m`, `1e3`), a $variable or a longer name.
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions,
    aggregations, keywords, nor label names (inside braces or by/on/... lists), nor parts of
    numbers, durations or dashboard variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in PROMQL_WORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(("expr", "names"), [
    ("ckpt_janitor_directory_marker_age_seconds > 1800",
     {"ckpt_janitor_directory_marker_age_seconds"}),
    ("a_bytes / b_bytes < 0.10 and predict_linear(a_bytes[1h], 4 * 3600) < 0",
     {"a_bytes", "b_bytes"}),
    ('up{job=~".*ckpt-janitor.*"} == 0 or absent(up{job=~".*ckpt-janitor.*"})', {"up"}),
    ("time() - x_seconds > 300 and y == 0", {"x_seconds", "y"}),
    ('histogram_quantile(0.99, sum by (instance, le) (rate(d_bucket{job=~"$job",a="}"}'
     "[$__rate_interval])))", {"d_bucket"}),
    ("sum without (reason) (increase(r_total[10m])) > 0", {"r_total"}),
    ("x offset 30m >= x and on(instance) group_left(mode) z", {"x", "z"}),
    ("deriv(lag[15m:1m]) > 1e3 OR Inf < NaN unless job:foo:rate5m", {"lag", "job:foo:rate5m"}),
    ("max\n  by (stream) (m{stream=~\"$stream\"}) * 2", {"m"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# ---- the rules ---------------------------------------------------------------------------------

def test_every_alert_has_a_for_a_severity_and_says_what_to_do() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    assert len(rules) == len(ALERTS)
    (group,) = _groups_of_rules_file()
    assert group["name"] == "ckpt-janitor"
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert metric_names(rule["expr"]), rule["alert"]


def test_the_rules_file_passes_promtool_check(promtool: str) -> None:
    done = _run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_the_prometheusrule_groups_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    extracted = tmp_path / "from-prometheusrule.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": _groups_of_prometheusrule()}))
    done = _run(promtool, "check", "rules", str(extracted))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", str(RULES_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_see_every_alert_fire_and_not_fire() -> None:
    document = yaml.safe_load(RULES_TEST.read_text())
    assert document["rule_files"] == [RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for test in document["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    assert fired == ALERTS, f"never seen firing: {sorted(ALERTS - fired)}"
    assert silent == ALERTS, f"never seen silent: {sorted(ALERTS - silent)}"


def test_the_prometheusrule_carries_exactly_the_rules_files_groups() -> None:
    assert _groups_of_prometheusrule() == _groups_of_rules_file()
    done = _run(sys.executable, str(RENDER), "--check")
    assert done.returncode == 0, done.stderr


def test_the_monitoring_kustomization_renders_the_prometheusrule() -> None:
    kubectl = _tool("kubectl", "apt-get install -y kubernetes-client")
    done = _run(kubectl, "kustomize", str(PROMETHEUS_RULE.parent))
    assert done.returncode == 0, done.stderr
    (document,) = yaml.safe_load_all(done.stdout)
    assert document["kind"] == "PrometheusRule"
    assert document["spec"]["groups"] == _groups_of_rules_file()


def test_the_prometheusrule_is_not_part_of_the_base() -> None:
    """Clusters without the Prometheus Operator's CRDs must still apply kubernetes/base."""
    base = yaml.safe_load((REPO / "kubernetes" / "base" / "kustomization.yaml").read_text())
    assert not any("monitoring" in str(entry) for entry in base.get("resources", []))


# ---- the dashboard -----------------------------------------------------------------------------

def test_the_dashboard_is_valid_and_every_panel_queries_something() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, label in (("stream", "stream"), ("mountpoint", "mountpoint")):
        query = variables[name]["definition"]
        assert re.fullmatch(rf"label_values\(\w+(\{{[^}}]*\}})?, {label}\)", query), query
    panels = dashboard["panels"]
    assert len(panels) >= 12
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["title"], panel
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
    used = {name for expr in _panel_exprs() for name in re.findall(r"\$(\w+)", expr)}
    assert used - {"__rate_interval"} <= set(variables), used


def test_the_dashboard_shows_what_the_operator_needs() -> None:
    exprs = "\n".join(_panel_exprs())
    for needed in ("ckpt_janitor_directory_lag_steps", "ckpt_janitor_directory_loaded_step",
                   "ckpt_janitor_directory_newest_complete_step",
                   "ckpt_janitor_directory_marker_age_seconds",
                   "ckpt_janitor_filesystem_avail_bytes", "ckpt_janitor_filesystem_size_bytes",
                   "ckpt_janitor_trash_pending_bytes", "ckpt_janitor_deletions_total",
                   "ckpt_janitor_refusals_total", "ckpt_janitor_errors_total",
                   "histogram_quantile(0.99", "ckpt_janitor_reconcile_duration_seconds_bucket",
                   "ckpt_janitor_managed_directories", "ckpt_janitor_standby_directories",
                   "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert needed in exprs, needed


def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, its variables given values, checked as a recording rule."""
    values = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*", "$stream": ".*",
              "$mountpoint": ".*"}
    rules = []
    for i, query in enumerate(_panel_exprs()):
        expr = query
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# ---- what a real daemon exports ----------------------------------------------------------------

def _sample_names(body: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(body)
            for sample in family.samples}


def _value(body: str, name: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


@pytest.mark.slow
def test_a_real_daemon_exports_every_metric_the_rules_and_the_dashboard_query(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run1" / "broadcasts"
    make_steps(managed, range(1, 8), files=2)
    publish_marker(managed, 3)
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--audit-log", "off",
                   "--rescan-interval", "0.5")
    daemon.wait_event("ready")
    wait_until(lambda: step_numbers(managed) == list(range(3, 8)), 20, "steps 1 and 2 to go")
    # `deleted` is logged once a step's bytes are freed, after the trash gauges were updated
    # (the per-directory one appears with the directory's first trashed step).
    wait_until(lambda: len(daemon.named("deleted")) == 2, 20, "steps 1 and 2 to be reclaimed")
    assert daemon.metric("ckpt_janitor_directory_lag_steps", stream="run1/broadcasts") == 4

    referenced = {name: f"rule {rule['alert']}" for rule in _rules()
                  for name in metric_names(rule["expr"])}
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            referenced.update(dict.fromkeys(metric_names(target["expr"]),
                                            f"panel {panel['title']!r}"))
    assert set(referenced) >= PROMETHEUS_OWN

    def missing() -> dict[str, str]:
        exported = _sample_names(daemon.http("/metrics")[1])
        return {name: where for name, where in referenced.items()
                if name not in exported and name not in PROMETHEUS_OWN}

    # Polled: the footprint (directory_bytes) is measured off the reaction path, a little later.
    try:
        wait_until(lambda: not missing(), 10, "every queried metric", interval_s=0.1)
    except AssertionError:
        pytest.fail(f"queried but not exported: {missing()}")

    # LoopStalled's premise: on a quiet tree the rescan timer still finishes passes.
    quiet = _value(daemon.http("/metrics")[1], "ckpt_janitor_last_reconcile_timestamp_seconds")
    assert quiet is not None and quiet > 0
    wait_until(lambda: (_value(daemon.http("/metrics")[1],
                               "ckpt_janitor_last_reconcile_timestamp_seconds") or 0) >= quiet + 1,
               20, "a timer pass to advance the reconcile timestamp on a quiet tree")
    assert step_numbers(managed) == list(range(3, 8))
    assert daemon.stop()[0] == 0


def test_the_deploy_guide_explains_every_alert() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    section = guide[guide.index("## Alerts and dashboard"):]
    for alert in ALERTS:
        assert f"| `{alert}` |" in section, alert
