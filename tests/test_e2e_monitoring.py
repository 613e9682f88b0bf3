"""The monitoring that ships with compose.yaml names only metrics the server exports.

Every metric named in the Grafana dashboard's queries and in the Prometheus alert rules
must be in a live server's /metrics (read from its `# TYPE` lines, so labelled metrics no
request has touched yet count too); the dashboard and the provisioning are checked for
the structure Grafana loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e  # scrapes the shared server

DOCKER = Path(__file__).parent.parent / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "entropy-serve.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
METRIC_NAME = re.compile(r"\b(entropy_serve_[a-z0-9_]+|vllm:[a-z0-9_:]+)")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name the exposition can hold, from its `# TYPE name kind` lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.MULTILINE):
        names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
        if kind == "counter":
            names |= {name.removesuffix("_total") + "_total"}
    return names


def test_every_metric_the_dashboard_and_alerts_name_is_exported(server):
    exported = exported_names(httpx.get(f"{server.url}/metrics").text)
    named = {name for query in dashboard_queries() + alert_queries() for name in METRIC_NAME.findall(query)}
    assert len(named) >= 15  # the regex found the queries' metrics, not nothing
    assert sorted(named - exported) == []


def test_dashboard_is_what_grafana_provisions():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert dashboard["uid"] == "entropy-serve" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "heatmap") and panel["title"] and panel["targets"]
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs)
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/entropy-serve.yml").read_text())["providers"][
        0
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
