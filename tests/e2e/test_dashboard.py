"""The Grafana dashboard (docs/grafana/vigil.json) against what a real Envoy
running Vigil exposes on /stats/prometheus.

Every query on the dashboard names metrics, labels and label values; this test
starts a stack with profiling, traffic analysis and a model enabled, reads the
exposition, and checks each name against it, so a renamed metric, a misspelt
label or a gauge put through rate() fails here rather than as an empty panel.
"""

from __future__ import annotations

import json
import re

from harness import ROOT, config, wait_for

DASHBOARD = ROOT / "docs" / "grafana" / "vigil.json"

# Labels Vigil's metrics carry through the stats_tags rules in envoy/envoy.yaml,
# plus `le` on histogram buckets. Any other label the exposition shows on a
# vigil_ series (a newer stats_tags rule; Envoy adds none of its own) is allowed
# too, but each query may only use labels the metrics it reads really carry.
VIGIL_LABELS = {"decision", "table", "metric", "model", "reason", "le"}
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
RANGE_FUNCTIONS = ("rate", "irate", "increase")

ML_CONFIG = {"mode": "inline", "anomaly_model_url": "http://vigil_ml/v2/models/vigil-iforest/infer",
             "model_timeout_ms": 200, "model_retry_count": 0}


# --- the dashboard ---------------------------------------------------------
def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query annotation."""
    out = []
    for p in all_panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a.get('name')!r}", a["expr"]))
    return out


# --- the exposition --------------------------------------------------------
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Exposition:
    """Prometheus text format: series names, their labels, and family types."""

    def __init__(self, text: str):
        self.types: dict[str, str] = {}
        self.series: dict[str, list[dict[str, str]]] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind.strip()
                continue
            m = SAMPLE.match(line)
            if m:
                self.series.setdefault(m.group(1), []).append(dict(LABEL_PAIR.findall(m.group(2) or "")))

    def family(self, name: str) -> tuple[str, str | None]:
        """The family a series name belongs to, and its type (None: unknown)."""
        for part in HISTOGRAM_PARTS:
            base = name[: -len(part)]
            if name.endswith(part) and self.types.get(base) == "histogram":
                return base, "histogram"
        return name, self.types.get(name)

    def labels(self, name: str) -> set[str]:
        return {k for labels in self.series.get(name, []) for k in labels}

    def values(self, name: str, label: str) -> set[str]:
        return {labels[label] for labels in self.series.get(name, []) if label in labels}

    def vigil_labels(self) -> set[str]:
        return {k for name in self.series if name.startswith("vigil_") for k in self.labels(name)}


# --- reading a PromQL expression ---------------------------------------------
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
METRIC = re.compile(r"(?<![a-zA-Z0-9_:$])vigil_[a-zA-Z0-9_:]*")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"(vigil_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RANGE = re.compile(r"\[([^\]]*)\]")
DURATION = re.compile(r"^(\$__rate_interval|\$__interval|\$__range|(\d+(ms|s|m|h|d|w|y))+)$")


def metric_names(expr: str) -> list[str]:
    """Every vigil_ metric an expression names (label values and strings excluded)."""
    return METRIC.findall(STRING.sub('""', expr))


def check_expr(expr: str, expo: Exposition) -> list[str]:
    """What is wrong with one dashboard expression against the exposition (empty: nothing)."""
    problems = []
    if not expr.strip():
        return ["empty expr"]
    bare = STRING.sub('""', expr)

    # Shape: balanced brackets and durations a range selector accepts.
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in bare:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                problems.append(f"unbalanced {ch!r}")
                break
    if stack:
        problems.append(f"unclosed {stack[-1]!r}")
    for window in RANGE.findall(bare):
        if not DURATION.match(window.strip()):
            problems.append(f"range [{window}] is not a duration")

    names = metric_names(expr)
    if not names:
        problems.append("names no vigil_ metric")
    carried: set[str] = set()
    for m in re.finditer(METRIC, bare):
        name = m.group(0)
        family, kind = expo.family(name)
        if kind == "histogram" and name == family:
            problems.append(f"{name} is a histogram: it has only {', '.join(name + p for p in HISTOGRAM_PARTS)}")
            continue
        if name not in expo.series:
            problems.append(f"{name} is not in /stats/prometheus")
            continue
        carried |= expo.labels(name)
        in_range = re.search(r"\b(" + "|".join(RANGE_FUNCTIONS) + r")\s*\(\s*$", bare[: m.start()])
        if kind in ("counter", "histogram") and not in_range:
            problems.append(f"{name} is a {kind} series: read it through rate() or increase()")
        if kind == "gauge" and in_range:
            problems.append(f"{name} is a gauge: rate() and increase() are for counters")

    allowed = VIGIL_LABELS | expo.vigil_labels()
    used: set[str] = set()
    for _, labels in GROUPING.findall(bare):
        used |= {label.strip() for label in labels.split(",") if label.strip()}
    for name, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            used.add(label)
            known = expo.values(name, label)
            if label in allowed and known:
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                missing = [v for v in wanted if v not in known]
                if missing:
                    problems.append(f"{name}{{{label}{op}{value!r}}}: no such value {missing} (has {sorted(known)})")
    for label in sorted(used):
        if label not in allowed:
            problems.append(f"label {label!r} is not one Vigil or Envoy puts on vigil_ series ({sorted(allowed)})")
        elif label not in carried:
            problems.append(f"label {label!r} is on none of the series this expression reads")

    if "histogram_quantile" in bare:
        if not any(n.endswith("_bucket") for n in names):
            problems.append("histogram_quantile over no _bucket series")
        if not any("le" in {x.strip() for x in labels.split(",")} for kw, labels in GROUPING.findall(bare) if kw == "by"):
            problems.append("histogram_quantile without `le` kept in the aggregation")
    return problems


def check_dashboard(dash: dict, expo: Exposition) -> list[str]:
    return [f"{where}: {problem}   [{expr}]"
            for where, expr in dashboard_exprs(dash) for problem in check_expr(expr, expo)]


# --- tests -----------------------------------------------------------------
def test_dashboard_is_a_grafana_dashboard_with_a_query_in_every_target():
    dash = load_dashboard()
    assert dash.get("uid") == "vigil"
    assert dash.get("title")
    assert isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36
    variables = dash.get("templating", {}).get("list", [])
    assert any(v.get("type") == "datasource" and v.get("query") == "prometheus" and v.get("name") == "datasource"
               for v in variables), variables

    panels = all_panels(dash.get("panels", []))
    graphs = [p for p in panels if p.get("type") != "row"]
    assert len(graphs) >= 20, [p.get("title") for p in graphs]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for p in graphs:
        assert p.get("title"), p
        assert p.get("datasource", {}).get("uid") == "${datasource}", p["title"]
        targets = p.get("targets") or []
        assert targets, f"{p['title']}: no targets"
        assert len({t.get("refId") for t in targets}) == len(targets), f"{p['title']}: refIds repeat"
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), f"{p['title']}: empty expr"
            assert t.get("datasource", {}).get("uid") == "${datasource}", p["title"]
    rows = [p["title"] for p in panels if p.get("type") == "row"]
    assert rows == ["Risk and decisions", "Anomalies", "ML health", "Overhead", "Alerts and SIEM", "Feedback and accuracy"], rows


def test_every_query_names_metrics_and_labels_a_real_envoy_exposes(stack_factory):
    stack = stack_factory(config(
        enable_ml_models=True, ml_model_config=ML_CONFIG,
        time_series_analysis={"enable_traffic_analysis": True, "analysis_window_minutes": 1}))
    for i in range(12):
        assert stack.request(f"/users/{i % 4}", headers={"x-user-id": f"user{i % 3}"})[0] == 200
    stack.settle()
    # Histograms reach the admin endpoint at Envoy's stats flush (5 s).
    def flushed() -> str | None:
        text = stack.prometheus()
        return text if re.search(r'^vigil_ml_latency_ms_count\{model="anomaly"\} [1-9]', text, re.M) else None
    text = wait_for(flushed, timeout=15, what="the model latency histogram to be flushed")
    expo = Exposition(text)
    families = {expo.family(n)[0] for n in expo.series if n.startswith("vigil_")}
    assert len(families) >= 25, sorted(families)

    # The check can fail: what it must catch, against this same exposition.
    assert check_expr('sum(rate(vigil_decisions_total{decision="block"}[5m]))', expo) == []
    for bad, says in [
        ("sum(rate(vigil_not_a_metric_total[5m]))", "vigil_not_a_metric_total is not in"),
        ("sum by (user) (rate(vigil_requests_total[5m]))", "label 'user'"),
        ("sum by (table) (rate(vigil_requests_total[5m]))", "label 'table' is on none"),
        ('sum(rate(vigil_decisions_total{decision="blocked"}[5m]))', "no such value ['blocked']"),
        ("rate(vigil_store_bytes[5m])", "vigil_store_bytes is a gauge"),
        ("sum(vigil_requests_total)", "vigil_requests_total is a counter series"),
        ("histogram_quantile(0.99, rate(vigil_processing_time_us[5m]))", "is a histogram"),
        ("histogram_quantile(0.99, sum by (model) (rate(vigil_ml_latency_ms_bucket[5m])))", "without `le`"),
        ("sum(rate(vigil_requests_total[5 minutes]))", "not a duration"),
        ("sum(rate(vigil_requests_total[5m])", "unclosed"),
    ]:
        problems = check_expr(bad, expo)
        assert any(says in p for p in problems), (bad, problems)

    dash = load_dashboard()
    problems = check_dashboard(dash, expo)
    assert not problems, "\n".join(problems)

    used = {expo.family(n)[0] for _, e in dashboard_exprs(dash) for n in metric_names(e)}
    print(f"\n{len(dashboard_exprs(dash))} queries over {len(used)} metric families checked; "
          f"labels on vigil_ series: {sorted(expo.vigil_labels())}")
    print(f"exposed but on no panel: {sorted(families - used) or 'none'}")
    for family in sorted(f for f in families if expo.types.get(f) == "histogram"):
        counts = re.findall(rf"^{family}_count(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        if not any(float(c) > 0 for c in counts):
            print(f"note: {family} recorded nothing in this run (its panels stay empty)")
