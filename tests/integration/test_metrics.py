"""``/metrics`` of a running pg_doorman: names, types and labels of the original, values that follow real traffic,
gzip and OpenMetrics, the ``prometheus`` alias, hostile HTTP that leaves the pooler serving, and the Grafana
dashboard and alert rules naming only metrics that are really exported."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from psycopg_helpers import scalar
from web_helpers import ADMIN, curl, raw_exchange, request, wait_for_port, web_config, web_port

from conftest import REPO_ROOT, DoormanProcess, StartDoorman, make_pool_config
from pg_doorman import __version__
from pg_doorman.devcluster import TempPostgres

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "pg_doorman.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
POOL = {"user": "app", "database": "appdb"}
DEPRECATED = (
    "pg_doorman_connection_count",
    "pg_doorman_pools_bytes",
    "pg_doorman_pools_queries_percentile",
    "pg_doorman_pools_transactions_percentile",
    "pg_doorman_pools_transactions_count",
    "pg_doorman_pools_queries_count",
    "pg_doorman_pools_avg_wait_time",
)


def start(doorman: StartDoorman, pg: TempPostgres, section: str = "web", **web: Any) -> tuple[DoormanProcess, int]:
    config = web_config(make_pool_config(pg), section, **web)
    proc = doorman(config)
    port = web_port(config)
    wait_for_port(port)
    return proc, port


def scrape(port: int, accept: str | None = None) -> dict[str, Metric]:
    reply = request(port, "/metrics", headers={"Accept": accept} if accept else None)
    assert reply.status == 200, reply.text
    return {family.name: family for family in text_string_to_metric_families(reply.text)}


def value(families: dict[str, Metric], family: str, sample: str | None = None, **labels: str) -> float:
    """The one sample of ``family`` (named ``sample``, default the family name) whose labels include ``labels``."""
    name = sample or family
    found = [s.value for s in families[family].samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {found} in {families[family].samples}"
    return float(found[0])


@pytest.fixture
def web(doorman: StartDoorman, pg_trust: TempPostgres) -> tuple[DoormanProcess, int]:
    return start(doorman, pg_trust)


def test_families_have_the_original_names_types_and_labels(web: tuple[DoormanProcess, int]) -> None:
    _, port = web
    families = scrape(port)
    expected = {
        "pg_doorman_build_info": ("gauge", {"version"}),
        "pg_doorman_users_configured": ("gauge", {"user", "database", "pool_mode"}),
        "pg_doorman_log_level": ("gauge", {"level"}),
        "pg_doorman_total_memory": ("gauge", set()),
        "pg_doorman_connections": ("counter", {"type"}),
        "pg_doorman_sockets": ("gauge", {"type"}),
        "pg_doorman_pools_clients": ("gauge", {"status", "user", "database"}),
        "pg_doorman_pool_size": ("gauge", {"user", "database"}),
        "pg_doorman_pools_servers": ("gauge", {"status", "user", "database"}),
        "pg_doorman_pools_oldest_active_age_ms": ("gauge", {"user", "database"}),
        "pg_doorman_pools_paused": ("gauge", {"user", "database"}),
        "pg_doorman_pools_maxwait_microseconds": ("gauge", {"user", "database"}),
        "pg_doorman_pools_errors": ("counter", {"user", "database", "sqlstate"}),
        "pg_doorman_pools_bytes": ("counter", {"direction", "user", "database"}),
        "pg_doorman_pools_transactions": ("counter", {"user", "database"}),
        "pg_doorman_pools_transactions_total_time": ("gauge", {"user", "database"}),
        "pg_doorman_pools_queries": ("counter", {"user", "database"}),
        "pg_doorman_pools_queries_total_time": ("gauge", {"user", "database"}),
        "pg_doorman_pools_query_duration_seconds": ("histogram", {"user", "database"}),
        "pg_doorman_pools_transaction_duration_seconds": ("histogram", {"user", "database"}),
        "pg_doorman_pools_wait_duration_seconds": ("histogram", {"user", "database"}),
        "pg_doorman_pool_prepared_cache_entries": ("gauge", {"user", "database"}),
        "pg_doorman_servers_prepared_hits": ("counter", {"user", "database"}),
        "pg_doorman_servers_prepared_misses": ("counter", {"user", "database"}),
        "pg_doorman_web_requests": ("counter", {"status_class", "role"}),
        "pg_doorman_web_auth_attempts": ("counter", {"role", "source"}),
    }
    for name, (kind, labels) in expected.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, f"{name}: {family.type} != {kind}"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, f"{name}: {sample}"
    assert value(families, "pg_doorman_build_info", version=__version__) == 1
    assert value(families, "pg_doorman_pool_size", **POOL) == 10
    assert value(families, "pg_doorman_users_configured", pool_mode="transaction", **POOL) == 1
    assert value(families, "pg_doorman_log_level", level="debug") == 1
    assert value(families, "pg_doorman_total_memory") > 10 * 1024 * 1024
    # The original's label values
    statuses = {s.labels["status"] for s in families["pg_doorman_pools_clients"].samples}
    assert statuses == {"idle", "waiting", "active"}
    sqlstates = {s.labels["sqlstate"] for s in families["pg_doorman_pools_errors"].samples}
    assert sqlstates == {"08", "53", "57", "25P02", "26000", "other"}
    types = {s.labels["type"] for s in families["pg_doorman_connections"].samples}
    assert types == {"plain", "tls", "cancel", "total"}
    buckets = [
        s.labels["le"]
        for s in families["pg_doorman_pools_query_duration_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    assert buckets == ["0.0005", "0.005", "0.05", "0.5", "5.0", "+Inf"]
    for deprecated in DEPRECATED:
        assert all(sample.name != deprecated for f in families.values() for sample in f.samples), deprecated


def test_counters_follow_real_traffic(web: tuple[DoormanProcess, int]) -> None:
    proc, port = web
    before = scrape(port)
    with proc.connect(autocommit=True) as conn:  # 26 transactions of one query each
        for _ in range(25):
            scalar(conn, "SELECT 1")
        with pytest.raises(Exception, match="division by zero"):
            scalar(conn, "SELECT 1/0")
    after = scrape(port)

    def grew(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert grew("pg_doorman_connections", "pg_doorman_connections_total", type="total") >= 1
    assert grew("pg_doorman_connections", "pg_doorman_connections_total", type="plain") >= 1
    assert grew("pg_doorman_pools_transactions", "pg_doorman_pools_transactions_total", **POOL) >= 26
    assert grew("pg_doorman_pools_queries", "pg_doorman_pools_queries_total", **POOL) >= 26
    assert grew("pg_doorman_pools_transactions_total_time", **POOL) > 0
    assert grew("pg_doorman_pools_bytes", "pg_doorman_pools_bytes_total", direction="received", **POOL) > 25 * 14
    assert grew("pg_doorman_pools_bytes", "pg_doorman_pools_bytes_total", direction="sent", **POOL) > 25 * 20
    assert grew("pg_doorman_pools_errors", "pg_doorman_pools_errors_total", sqlstate="other", **POOL) == 1
    count = "pg_doorman_pools_query_duration_seconds_count"
    assert grew("pg_doorman_pools_query_duration_seconds", count, **POOL) >= 26
    inf_bucket = value(after, "pg_doorman_pools_query_duration_seconds", count[:-6] + "_bucket", le="+Inf", **POOL)
    assert inf_bucket == value(after, "pg_doorman_pools_query_duration_seconds", count, **POOL)
    assert value(after, "pg_doorman_pools_servers", status="idle", **POOL) >= 1
    # A scrape counts itself: the first one is visible in the second.
    requests = "pg_doorman_web_requests_total"
    assert value(after, "pg_doorman_web_requests", requests, status_class="2xx", role="anonymous") >= 1


def test_gzip_openmetrics_head_and_curl(web: tuple[DoormanProcess, int]) -> None:
    _, port = web
    plain = request(port, "/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in plain.headers

    raw = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    assert len(body) < len(plain.body) / 3
    text = zlib.decompress(body, 16 + zlib.MAX_WBITS).decode()
    assert {f.name for f in text_string_to_metric_families(text)} >= {"pg_doorman_pools_clients"}

    om = request(port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(om.text)}
    assert families["pg_doorman_pools_transactions"].type == "counter"
    assert families["pg_doorman_pools_wait_duration_seconds"].type == "histogram"

    headed = curl("-I", f"http://127.0.0.1:{port}/metrics")
    assert headed.returncode == 0, headed.stderr
    assert re.search(r"^HTTP/1.1 200 OK", headed.stdout, re.M)
    assert int(re.search(r"Content-Length: (\d+)", headed.stdout).group(1)) > 1000  # type: ignore[union-attr]

    fetched = curl("--compressed", f"http://127.0.0.1:{port}/metrics")
    assert fetched.returncode == 0 and "pg_doorman_pools_clients{" in fetched.stdout
    assert request(port, "/metrics", method="POST", body=b"x").status == 405
    assert request(port, "/nope").status == 404


def test_prometheus_section_alias(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    proc, port = start(doorman, pg_trust, section="prometheus")
    assert "pg_doorman_pools_clients" in scrape(port)
    assert "web listener on 127.0.0.1:" in proc.wait_for_log("web listener on")


def test_hostile_requests_leave_the_pooler_serving(web: tuple[DoormanProcess, int]) -> None:
    proc, port = web
    huge_header = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert raw_exchange(port, huge_header).startswith(b"HTTP/1.1 431 ")
    assert raw_exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    assert raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n").startswith(
        b"HTTP/1.1 413 "
    )
    assert raw_exchange(port, b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    # Clients that leave midway: half a request line, half a head, a connect-and-close.
    for partial in (b"GET /met", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b""):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(partial)
    # Pipelined keep-alive requests on one connection are answered in order.
    two = raw_exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert two.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in two
    with proc.connect() as conn:
        assert scalar(conn, "SELECT 42") == 42
    assert "pg_doorman_pools_clients" in scrape(port)
    assert proc.returncode is None


def test_web_listener_is_off_by_default(single: DoormanProcess) -> None:
    assert "web listener" not in single.log_text()
    with single.connect() as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_web_port_taken_is_a_startup_error(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = web_config(make_pool_config(pg_trust))
        config["web"]["port"] = taken.getsockname()[1]
        proc = doorman(config, wait=False)
        assert proc.wait(timeout=15) != 0
        assert "cannot start" in proc.log_text()


# ------------------------------------------------------------------------------- deploy/ files


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bpg_doorman_[a-z0-9_]+", expr))


def _exported_series_names(families: dict[str, Metric]) -> set[str]:
    """Every name a PromQL expression may use: the samples' names (``_total``, ``_bucket``, ``_sum``...)."""
    return {sample.name for family in families.values() for sample in family.samples} | {
        name + suffix
        for name, family in families.items()
        if family.type == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }


def _dashboard_expressions(node: Any) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, item in node.items():
            if isinstance(item, str) and (key == "expr" or (key == "query" and "pg_doorman_" in item)):
                found.append(item)
            else:
                found.extend(_dashboard_expressions(item))
    elif isinstance(node, list):
        for item in node:
            found.extend(_dashboard_expressions(item))
    return found


def test_dashboard_and_alerts_name_only_exported_metrics(web: tuple[DoormanProcess, int]) -> None:
    _, port = web
    exported = _exported_series_names(scrape(port))

    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _dashboard_expressions(dashboard)
    assert len(expressions) >= 10
    used = set().union(*(_metric_names(e) for e in expressions))
    assert used - exported == set(), f"dashboard names metrics /metrics does not export: {used - exported}"
    assert any("histogram_quantile" in e for e in expressions)
    panel_titles = " ".join(p.get("title", "") for p in dashboard["panels"]).lower()
    for topic in ("clients", "servers", "transactions", "queries", "latency", "wait", "errors", "bytes"):
        assert topic in panel_titles, topic

    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} >= {
        "PgDoormanDown",
        "PgDoormanClientsWaiting",
        "PgDoormanMaxWaitHigh",
        "PgDoormanErrorRate",
        "PgDoormanPoolSaturated",
    }
    used = set().union(*(_metric_names(rule["expr"]) for rule in alerts))
    assert used - exported == set(), f"alert rules name metrics /metrics does not export: {used - exported}"


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: scripts/setup.sh installs Debian's prometheus package"
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(ALERTS.read_text().replace("expr: ", "expr: sum(", 1))
    failed = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, check=False)
    assert failed.returncode != 0  # the check can fail: it really parses the expressions


GC_FAMILIES = {
    "pg_doorman_gc_full_collections": ("counter", "pg_doorman_gc_full_collections_total"),
    "pg_doorman_gc_pause_seconds": ("counter", "pg_doorman_gc_pause_seconds_total"),
    "pg_doorman_gc_longest_pause_seconds": ("gauge", "pg_doorman_gc_longest_pause_seconds"),
}


def gc_figures(families: dict[str, Metric]) -> tuple[float, float, float]:
    """(full collections, their total pause, the longest pause) from one scrape; each family one unlabelled sample."""
    found = []
    for family, (kind, sample) in GC_FAMILIES.items():
        assert family in families, f"{family} missing from /metrics"
        assert families[family].type == kind, f"{family}: {families[family].type} != {kind}"
        samples = [s for s in families[family].samples if s.name == sample]
        assert len(samples) == 1 and samples[0].labels == {}, families[family].samples
        found.append(float(samples[0].value))
    full, paused, longest = found
    return full, paused, longest


def test_gc_figures_count_the_collections_of_the_tuned_policy(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    """The tuned policy (the default) runs one full collection at start: counted, with its pause, at once. The
    counters never go back between scrapes, and agree with /api/process (the JSON API is on with ``ui``)."""
    proc, port = start(doorman, pg_trust, ui=True)
    full, paused, longest = gc_figures(scrape(port))
    assert full >= 1  # the start-up collection
    assert 0 < paused < 60
    assert paused / full <= longest < 60  # the longest pause is at least the mean full one
    for _ in range(30):  # churn: logins and disconnects are what promotes objects to the old generations
        with proc.connect(autocommit=True) as conn:
            assert scalar(conn, "SELECT 1") == 1
    later = gc_figures(scrape(port))
    assert later[0] >= full and later[1] >= paused and later[2] >= longest, (full, paused, longest, later)
    assert later[2] >= later[1] / later[0]
    process = request(port, "/api/process", auth=ADMIN).json()["gc"]
    assert set(process) == {"full_collections", "pause_seconds_total", "longest_pause_seconds"}
    assert process["full_collections"] >= later[0] and process["pause_seconds_total"] >= later[1]
    assert process["longest_pause_seconds"] >= later[2]
    # OpenMetrics: the counters keep their _total samples there too.
    reply = request(port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    names = {s.name for family in parse_openmetrics(reply.text) for s in family.samples}
    assert {"pg_doorman_gc_full_collections_total", "pg_doorman_gc_pause_seconds_total"} <= names


def test_gc_figures_under_cpythons_own_policy(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    """``PG_DOORMAN_GC=default``: no start-up collection of ours, but the collections CPython runs are still timed;
    the families are there from the first scrape, never negative, never going back."""
    config = web_config(make_pool_config(pg_trust))
    proc = doorman(config, env={"PG_DOORMAN_GC": "default"})
    port = web_port(config)
    wait_for_port(port)
    full, paused, longest = gc_figures(scrape(port))
    assert full >= 0 and paused >= 0 and longest >= 0
    assert full == 0 or paused / full <= longest
    with proc.connect(autocommit=True) as conn:
        assert scalar(conn, "SELECT 1") == 1
    later = gc_figures(scrape(port))
    assert later[0] >= full and later[1] >= paused and later[2] >= longest
