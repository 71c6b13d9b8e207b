"""Prometheus and Grafana: configs that load, and queries that read series that exist.

promtool checks the scrape config and the alert rules. Every PromQL expression, in the rules
and in the dashboard, may only name ``gateway_*`` / ``auth_*`` series that the services'
metrics modules define, so renaming a metric without updating the dashboards fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    DEPLOY,
    compose,
    exported_metric_names,
    run,
    sockgate_series_in,
    tool,
)

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
INSTALL_PROMTOOL = "apt-get install -y prometheus (Debian's package ships promtool)"


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def test_prometheus_config_loads(tmp_path: Path) -> None:
    promtool = tool("promtool", INSTALL_PROMTOOL)
    # The config names the rules by their path inside the container; point it at ours.
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in config
    config = config.replace("/etc/prometheus/rules/", f"{PROMETHEUS / 'rules'}/")
    (tmp_path / "prometheus.yml").write_text(config)
    run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])


def test_alert_rules_load() -> None:
    promtool = tool("promtool", INSTALL_PROMTOOL)
    assert RULE_FILES
    run([promtool, "check", "rules", *map(str, RULE_FILES)])


def test_every_alert_says_how_bad_and_what() -> None:
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert len(alerts) >= 8
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alerts_cover_the_failure_modes() -> None:
    series = set().union(*(sockgate_series_in(rule["expr"]) for rule in _rules()))
    exprs = " ".join(rule["expr"] for rule in _rules())
    assert 'up{job="gateway"}' in exprs
    assert "gateway_handshakes_total" in series
    assert "gateway_redis_publish_failures_total" in series
    assert "gateway_jwks_fetches_total" in series
    assert "auth_logins_total" in series


def test_rules_read_only_exported_series() -> None:
    exported = exported_metric_names()
    for rule in _rules():
        unknown = sockgate_series_in(rule["expr"]) - exported
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_metric_names_are_read_from_the_services() -> None:
    exported = exported_metric_names()
    # Spot checks that the parser finds counters, gauges and histograms of both services.
    assert {
        "auth_logins_total",
        "auth_http_request_duration_seconds_bucket",
        "gateway_connected_sockets",
        "gateway_handshakes_total",
        "gateway_handshake_duration_seconds_bucket",
    } <= exported


def test_metric_names_match_a_live_registry() -> None:
    # The source scan above is what the dashboards are checked against; it must see exactly
    # the series the services' metrics classes register.
    from prometheus_client import CollectorRegistry

    from services.auth.metrics import AuthMetrics
    from services.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    AuthMetrics(registry)
    GatewayMetrics(registry)
    families = {metric.name: metric.type for metric in registry.collect()}
    live = set()
    for name, kind in families.items():
        if kind == "counter":
            live.add(f"{name}_total")
        elif kind in ("histogram", "summary"):
            live.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            live.add(name)
    assert live == exported_metric_names()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_read_exported_series(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exported = exported_metric_names()
    targets = _targets(dashboard)
    assert targets
    for title, expr in targets:
        series = sockgate_series_in(expr)
        assert series or re.search(r"\bup\{", expr), f"{title}: {expr} reads no sockgate series"
        assert series <= exported, f"{title}: unknown {series - exported}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shows_what_operators_watch(path: Path) -> None:
    exprs = " ".join(expr for _, expr in _targets(json.loads(path.read_text())))
    for needle in (
        "gateway_connected_sockets",
        "histogram_quantile(0.99, sum by (le) (rate(gateway_handshake_duration_seconds_bucket",
        'gateway_handshakes_total{result="refused"}',
        "gateway_deliveries_total",
        "gateway_redis_publish_failures_total",
        "auth_logins_total",
    ):
        assert needle in exprs, needle


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_the_provisioned_datasource(path: Path) -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in datasources}
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    for panel in _panels(dashboard):
        if "datasource" in panel:
            assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(str(volume).split(":")[:2] for volume in grafana["volumes"])
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "sockgate.yml").read_text()
    )["providers"]
    assert mounts["./deploy/grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_finds_every_replica_through_dns() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose()["services"]
    gateway_sd = jobs["gateway"]["dns_sd_configs"][0]
    assert gateway_sd["names"] == ["gateway"]
    assert gateway_sd["type"] == "A"
    assert str(gateway_sd["port"]) == str(services["gateway"]["environment"]["GATEWAY_PORT"])
    auth_sd = jobs["auth"]["dns_sd_configs"][0]
    assert str(auth_sd["port"]) == str(services["auth"]["environment"]["AUTH_PORT"])
    mounts = dict(str(volume).split(":")[:2] for volume in services["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/rules"] == "/etc/prometheus/rules"
