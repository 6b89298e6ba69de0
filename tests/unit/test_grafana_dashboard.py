"""The Grafana dashboard (monitoring/grafana/gpuhub-dashboard.json) imports, and asks only for what exists.

Pure: the dashboard's PromQL is read by a small tokenizer (below), and the metric and label names
it finds are checked against the metrics that gpuhub's and JupyterHub's code declare. Whether a
running hub really exposes them is tests/integration/test_grafana_metrics.py's question; it uses
`queries()` and `names()` from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jupyterhub.metrics
import pytest
from prometheus_client.metrics import MetricWrapperBase

from spawner import gpu_service, operations

DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "gpuhub-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# --- A PromQL tokenizer: enough to find every metric and label name an expression uses -------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?![\w.]))
  | (?P<ident>[a-zA-Z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,:@])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)
# Aggregations take `by (…)`/`without (…)`; functions only arguments. Anything else followed by "(" is an error.
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "deriv", "delta", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month", "predict_linear", "quantile_over_time",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time", "sum_over_time",
    "time", "timestamp", "vector", "year",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
MATCHING = {"on", "ignoring", "group_left", "group_right"}


class PromQLError(ValueError):
    pass


def tokens(expr: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(expr):
        m = _TOKEN.match(expr, at)
        if m is None:
            raise PromQLError(f"cannot read {expr[at : at + 20]!r} in {expr!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        at = m.end()
    return out


def names(expr: str) -> dict[str, set[str]]:
    """Every metric name `expr` selects, with the label names it needs on that metric: those it matches
    on, and those it groups or matches by around it (`sum by (le) (rate(x_bucket[5m]))` needs `le` on
    x_bucket). Raises PromQLError where the expression is not PromQL."""
    toks = tokens(expr)
    found: dict[str, set[str]] = {}
    frames: list[list[str]] = [[]]  # metrics inside each open "(", innermost last
    closers: list[str] = []
    matching_labels: set[str] = set()  # on()/ignoring()/group_x() labels: needed on both sides
    pending: list[set[str]] = []  # by (…) labels given before their aggregation's "("
    frame_labels: list[set[str]] = []  # what each open "(" owes its metrics when it closes
    last_closed: list[str] = []  # metrics of the "(" that closed last (for `sum(…) by (…)`)
    i = 0

    def label_list(j: int) -> tuple[set[str], int]:
        """Labels in "( a, b )" starting at toks[j]; returns them and the index after ")"."""
        if j >= len(toks) or toks[j] != ("open", "("):
            raise PromQLError(f"expected a label list after {toks[j - 1][1]!r} in {expr!r}")
        labels, j = set(), j + 1
        while j < len(toks) and toks[j] != ("close", ")"):
            kind, text = toks[j]
            if kind == "ident":
                labels.add(text)
            elif text != ",":
                raise PromQLError(f"{text!r} in a label list in {expr!r}")
            j += 1
        if j == len(toks):
            raise PromQLError(f"unclosed label list in {expr!r}")
        return labels, j + 1

    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in AGGREGATIONS:
            i += 1
            if after[0] == "ident" and after[1] in ("by", "without"):
                labels, i = label_list(i + 1)
                pending.append(labels if after[1] == "by" else set())
            else:
                pending.append(set())
            if i >= len(toks) or toks[i] != ("open", "("):
                raise PromQLError(f"{text} needs its argument in parentheses in {expr!r}")
            continue
        if kind == "ident" and text in ("by", "without"):
            if i == 0 or toks[i - 1] != ("close", ")"):
                raise PromQLError(f"{text!r} without an aggregation before it in {expr!r}")
            labels, i = label_list(i + 1)
            for metric in last_closed if text == "by" else ():
                found[metric] |= labels
            continue
        if kind == "ident" and text in MATCHING:
            if after == ("open", "("):
                labels, i = label_list(i + 1)
                matching_labels |= labels
            else:
                i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and after == ("open", "("):
            if text not in FUNCTIONS:
                raise PromQLError(f"unknown function {text!r} in {expr!r}")
            pending.append(set())
            i += 1
            continue
        if kind == "ident":
            found.setdefault(text, set())
            frames[-1].append(text)
            i += 1
            if after == ("open", "{"):
                i += 1
                while i < len(toks) and toks[i] != ("close", "}"):
                    label, op, value = (toks[i : i + 3] + [("", "")] * 3)[:3]
                    if label[0] != "ident" or op[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
                        raise PromQLError(f"bad label matcher near {label[1]!r} in {expr!r}")
                    found[text].add(label[1])
                    i += 3
                    if i < len(toks) and toks[i] == ("op", ","):
                        i += 1
                if i == len(toks):
                    raise PromQLError(f"unclosed {{ in {expr!r}")
                i += 1
            continue
        if kind == "open" and text == "{":
            raise PromQLError(f"a selector without a metric name in {expr!r}")
        if kind == "open" and text == "[":
            close = next((j for j in range(i, len(toks)) if toks[j] == ("close", "]")), None)
            if close is None:
                raise PromQLError(f"unclosed [ in {expr!r}")
            for k, t in toks[i + 1 : close]:
                if k not in ("duration", "variable", "number") and t != ":":
                    raise PromQLError(f"{t!r} in a range in {expr!r}")
            i = close + 1
            continue
        if kind == "open":
            frames.append([])
            closers.append(")")
            frame_labels.append(pending.pop() if pending else set())
            i += 1
            continue
        if kind == "close":
            if text != ")" or not closers:
                raise PromQLError(f"unbalanced {text!r} in {expr!r}")
            closers.pop()
            inner = frames.pop()
            for metric in inner:
                found[metric] |= frame_labels[-1]
            frame_labels.pop()
            frames[-1].extend(inner)
            last_closed = inner
            i += 1
            continue
        i += 1  # numbers, strings (function arguments), operators, Grafana's variables
    if closers:
        raise PromQLError(f"unclosed ( in {expr!r}")
    if pending:
        raise PromQLError(f"an aggregation without an argument in {expr!r}")
    for metric in found:
        found[metric] |= matching_labels
    return found


# --- The dashboard's queries -----------------------------------------------------------------------


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def _label_values(query: str) -> tuple[str, str]:
    """Grafana's `label_values(selector, label)` -> (selector, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
    if m is None:
        raise PromQLError(f"variable query {query!r} is not label_values(metric, label)")
    return m.group(1), m.group(2)


def queries(dashboard: dict | None = None) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) for every query of the dashboard: panel targets and templating variables.

    A variable's `label_values(sel, label)` is `sel` needing `label`, as "{{label}}" in a legend would."""
    dashboard = dashboard or load()
    out = []
    for p in panels(dashboard):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", "")))
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            selector, label = _label_values(v["query"]["query"])
            out.append((f"variable {v['name']!r}", selector, "{{" + label + "}}"))
    return out


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))


# --- What the code declares -------------------------------------------------------------------------


def declared() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric gpuhub and JupyterHub declare, as the text exposition
    names them: counters as `_total`, histograms as `_bucket` (with `le`), `_count` and `_sum`."""
    out: dict[str, set[str]] = {}
    for module in (gpu_service, operations, jupyterhub.metrics):
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            name, labels = metric._name, set(metric._labelnames)
            if metric._type == "counter":
                out[name + "_total"] = labels
            elif metric._type == "histogram":
                out[name + "_bucket"] = labels | {"le"}
                out[name + "_count"] = out[name + "_sum"] = labels
            else:
                out[name] = labels
    return out


# --- The tokenizer itself ---------------------------------------------------------------------------------


def test_the_tokenizer_finds_metrics_with_their_matched_and_grouped_labels():
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{status="ok", x=~"$v"}[$__rate_interval])))'
        ' / on (x) group_left sum(b_total{y!="1"}) by (z) + count(c == 0) or vector(0)'
    )
    assert names(expr) == {
        "a_bucket": {"status", "x", "le"},
        "b_total": {"y", "z", "x"},
        "c": {"x"},
    }
    assert names('max(jupyterhub_active_users{period="24h"}) offset 1h') == {"jupyterhub_active_users": {"period"}}


@pytest.mark.parametrize(
    "bad",
    [
        "sum(rate(a[5m])",  # unclosed
        "rate(a[5m]))",  # one ")" too many
        "frobnicate(a)",  # no such function
        '{__name__="a"}',  # no metric name to check
        'a{b="c"',  # unclosed selector
        "a{b}",  # a matcher without operator and value
        "sum by le (a)",  # labels need parentheses
        "a[5m",  # unclosed range
        "a ? b",  # not PromQL
    ],
)
def test_the_tokenizer_refuses_what_is_not_promql(bad):
    with pytest.raises(PromQLError):
        names(bad)


# --- The dashboard --------------------------------------------------------------------------------------


def test_the_dashboard_is_importable_with_a_prometheus_datasource_input():
    d = load()
    (ds,) = d["__inputs"]
    assert ds == {**ds, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    required = {(r["type"], r["id"]) for r in d["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    used = {p["type"] for p in panels(d) if p["type"] != "row"}
    assert {("panel", t) for t in used} <= required, used
    assert d["id"] is None and d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_queries_the_prometheus_input():
    d = load()
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), (p["title"], t["refId"])
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE, v["name"]


def test_panels_do_not_overlap():
    taken: dict[tuple[int, int], str] = {}
    for p in panels(load()):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


def test_every_variable_a_query_uses_is_defined_and_every_defined_one_is_used():
    d = load()
    defined = {v["name"] for v in d["templating"]["list"]}
    used = set()
    for where, expr, _ in queries(d):
        for kind, text in tokens(expr):
            for name in re.findall(r"\$\{?(\w+)", text) if kind in ("variable", "string") else ():
                if not name.startswith("__"):  # Grafana's own: $__rate_interval, $__range
                    assert name in defined, f"{where} uses ${name}, which the dashboard does not define"
                    used.add(name)
    used.add("DS_PROMETHEUS")  # in every panel's datasource
    assert used == defined, f"defined but unused: {defined - used}"
    assert {"model", "mig_profile", "user"} <= defined


def test_every_query_uses_only_metrics_and_labels_the_code_declares():
    known = declared()
    assert "gpuhub_devices_total" in known and "jupyterhub_server_spawn_duration_seconds_bucket" in known
    for where, expr, legend in queries():
        found = names(expr)
        assert found, f"{where}: {expr!r} selects no metric"
        for metric, labels in found.items():
            assert metric in known, f"{where}: {metric!r} is no metric gpuhub or JupyterHub declares"
            assert labels <= known[metric], f"{where}: {metric} has no label(s) {labels - known[metric]}"
        available = set().union(*(known[m] for m in found))
        missing = legend_labels(legend) - available
        assert not missing, f"{where}: the legend names {missing}, which none of {sorted(found)} has"


def test_every_gpuhub_metric_has_a_panel():
    used = set().union(*(names(expr) for _, expr, _ in queries()))
    # A histogram counts as shown when any of its series is; the wait histogram is shown by its buckets.
    shown = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used} | used
    missing = sorted(
        m for m in declared() if m.startswith("gpuhub_") and re.sub(r"_(bucket|count|sum)$", "", m) not in shown
    )
    assert not missing, f"gpuhub metrics no panel shows: {missing}"
