"""The Grafana dashboard in deploy/ names only metrics the control plane exports.

Every panel's PromQL is reduced to its metric names (functions, label matchers,
grouping labels, ranges and keywords taken out) and each is checked against the
registry a real `ControlPlane` builds, with the series names Prometheus derives
from each family: `_total` for counters, `_bucket`/`_sum`/`_count` for histograms.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from knative_xds.app import ControlPlane

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "dashboards" / "knative-xds.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w$:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _STRING.sub("", expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {n for n in _IDENT.findall(text) if n not in _KEYWORDS}


def exported() -> set[str]:
    """Every series name the plane's registry can expose (whether or not it has samples)."""
    names: set[str] = set()
    for family in ControlPlane().metrics.registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int)
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["panels"], "no panels"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize(("title", "expr"), exprs(), ids=[t for t, _ in exprs()])
def test_every_query_names_a_metric_the_control_plane_exports(title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"panel {title!r}: no metric in {expr!r}"
    missing = names - exported()
    assert not missing, f"panel {title!r} reads {sorted(missing)}, not exported"


def test_the_dashboard_covers_every_exported_family() -> None:
    read = set().union(*(metric_names(e) for _, e in exprs()))
    families = {f.name for f in ControlPlane().metrics.registry.collect()}
    unread = {f for f in families if not any(n.startswith(f) for n in read)}
    assert not unread, f"no panel reads {sorted(unread)}"


@pytest.mark.parametrize(
    ("expr", "wrong"),
    [
        ('sum(rate(knative_xds_xds_push_total{job=~"$job"}[5m]))', "knative_xds_xds_push_total"),
        ("knative_xds_xds_pushes", "knative_xds_xds_pushes"),  # a counter without _total
        (
            "histogram_quantile(0.99, sum by (le) (rate(knative_xds_convergence_seconds[5m])))",
            "knative_xds_convergence_seconds",  # a histogram without _bucket
        ),
        ("max(knative_xds_rejected_object) by (kind)", "knative_xds_rejected_object"),
    ],
    ids=["misspelled", "counter-without-total", "histogram-without-bucket", "trailing-by"],
)
def test_a_misspelled_metric_is_caught(expr: str, wrong: str) -> None:
    assert metric_names(expr) - exported() == {wrong}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (type) (rate(knative_xds_xds_nacks_total{type="CDS", job=~"a|b"}[$__rate_interval]))',
            {"knative_xds_xds_nacks_total"},
        ),
        (
            "time() - max(knative_xds_source_last_sync_timestamp_seconds offset 5m)",
            {"knative_xds_source_last_sync_timestamp_seconds"},
        ),
        ("a_total / on (instance) group_left b_count", {"a_total", "b_count"}),
    ],
    ids=["labels-and-range", "function-and-offset", "binary-with-matching"],
)
def test_metric_names_are_taken_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
