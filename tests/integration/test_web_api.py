"""The JSON API of a running pg_doorman: roles (admin via HTTP Basic, ui_anonymous, 401 with or without a
challenge), read routes reflecting real clients and pools, admin actions (reload good and bad, pause), CSRF and
path-traversal attempts, and the console being off with a weak admin password."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg_helpers import scalar, wait_until
from web_helpers import curl, raw_exchange, request, wait_for_port, web_config, web_port

from conftest import ADMIN_PASSWORD, ADMIN_USER, DoormanProcess, StartDoorman, make_pool_config
from pg_doorman import __version__
from pg_doorman.devcluster import TempPostgres
from pg_doorman.pool import Pool

ADMIN = (ADMIN_USER, ADMIN_PASSWORD)
JSON_CALLER = {"Accept": "application/json"}


def start(doorman: StartDoorman, pg: TempPostgres, **web: Any) -> tuple[DoormanProcess, int]:
    config = web_config(make_pool_config(pg), ui=True, **web)
    proc = doorman(config)
    port = web_port(config)
    wait_for_port(port)
    return proc, port


@pytest.fixture
def console(doorman: StartDoorman, pg_trust: TempPostgres) -> tuple[DoormanProcess, int]:
    return start(doorman, pg_trust)


def test_read_routes_need_the_admin_credentials(console: tuple[DoormanProcess, int]) -> None:
    _, port = console
    as_curl = request(port, "/api/pools")
    assert as_curl.status == 401
    assert as_curl.headers["www-authenticate"].startswith('Basic realm="pg_doorman"')
    as_script = request(port, "/api/pools", headers=JSON_CALLER)
    assert as_script.status == 401 and "www-authenticate" not in as_script.headers
    xhr = request(port, "/api/pools", headers={"X-Requested-With": "XMLHttpRequest"})
    assert xhr.status == 401 and "www-authenticate" not in xhr.headers
    wrong = request(port, "/api/pools", auth=(ADMIN_USER, "nope"), headers=JSON_CALLER)
    assert wrong.status == 401 and wrong.json() == {"error": "wrong credentials"}
    ok = request(port, "/api/pools", auth=ADMIN)
    assert ok.status == 200 and ok.headers["content-type"].startswith("application/json")
    (pool,) = ok.json()
    assert (pool["database"], pool["user"], pool["pool_size"]) == ("appdb", "app", 10)
    # curl with -u, as the README shows
    pasted = curl("-u", f"{ADMIN_USER}:{ADMIN_PASSWORD}", f"http://127.0.0.1:{port}/api/version")
    assert pasted.returncode == 0 and f'"version":"{__version__}"' in pasted.stdout
    assert request(port, "/api/auth/config").json()["role"] == "anonymous"
    assert request(port, "/api/auth/config", auth=ADMIN).json()["role"] == "admin"
    assert request(port, "/api/nope", auth=ADMIN).status == 404
    assert request(port, "/api/pools", auth=ADMIN, method="DELETE").status == 405
    assert request(port, "/metrics").status == 200  # never behind a password


def test_routes_reflect_clients_servers_and_config(console: tuple[DoormanProcess, int]) -> None:
    proc, port = console
    with proc.connect(application_name="api-probe", autocommit=True) as conn:
        assert scalar(conn, "SELECT 1") == 1
        clients = request(port, "/api/clients", auth=ADMIN).json()
        mine = [c for c in clients["clients"] if c["application_name"] == "api-probe"]
        assert clients["total"] >= 1 and len(mine) == 1
        assert (mine[0]["user"], mine[0]["database"], mine[0]["state"]) == ("app", "appdb", "idle")
        assert request(port, "/api/clients?db=other", auth=ADMIN).json() == {"total": 0, "clients": []}
        assert request(port, "/api/clients?limit=x", auth=ADMIN).status == 400
        servers = request(port, "/api/servers", auth=ADMIN).json()
        assert len(servers) == 1 and servers[0]["pool"] == "appdb/app" and servers[0]["pid"] > 0
        overview = request(port, "/api/overview", auth=ADMIN).json()
        assert overview["clients"]["total"] >= 1 and overview["pools"] == 1 and overview["servers"]["idle"] == 1
    databases = request(port, "/api/databases", auth=ADMIN).json()
    assert databases[0]["name"] == "appdb" and databases[0]["pool_mode"] == "transaction"
    assert request(port, "/api/users", auth=ADMIN).json() == [
        {"name": "app", "database": "appdb", "pool_mode": "transaction"}
    ]
    stats = request(port, "/api/stats", auth=ADMIN).json()
    assert stats[0]["database"] == "appdb" and "total_xact_count" in stats[0] and "avg_wait_time" in stats[0]
    assert request(port, "/api/log_level", auth=ADMIN).json() == {"log_level": "debug"}
    process = request(port, "/api/process", auth=ADMIN).json()
    assert process["pid"] == proc.pid and process["memory_bytes"] > 0 and process["uptime_seconds"] >= 0
    connections = request(port, "/api/connections", auth=ADMIN).json()
    assert connections["total"] >= 1 and connections["tls"] == 0
    assert request(port, "/api/prepared", auth=ADMIN).json()[0]["database"] == "appdb"

    config = request(port, "/api/config", auth=ADMIN)
    settings = {entry["key"]: entry for entry in config.json()["settings"]}
    assert settings["general.port"]["restart_required"] is True
    assert settings["web.port"]["restart_required"] is True
    assert settings["general.query_wait_timeout"]["restart_required"] is False
    assert settings["pools.appdb.server_port"]["value"] == proc.config["pools"]["appdb"]["server_port"]
    assert settings["general.admin_password"]["value"] == "********"
    assert f'"{ADMIN_PASSWORD}"' not in config.text  # as a JSON string value
    assert proc.config["pools"]["appdb"]["users"][0]["password"] not in config.text

    logs = request(port, "/api/logs", auth=ADMIN).json()
    assert logs["enabled"] and any("web listener on" in line["message"] for line in logs["lines"])
    warnings = request(port, "/api/logs?level=warning", auth=ADMIN).json()["lines"]
    assert all(line["level"] in ("warning", "error", "critical") for line in warnings)


def test_ui_anonymous_opens_read_routes_only(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    _, port = start(doorman, pg_trust, ui_anonymous=True)
    assert request(port, "/api/overview").status == 200
    assert request(port, "/api/pools", headers=JSON_CALLER).status == 200
    assert request(port, "/api/logs", headers=JSON_CALLER).status == 401  # personal data: admin only
    assert request(port, "/api/admin/reload", method="POST", headers=JSON_CALLER).status == 401
    assert request(port, "/api/pools", auth=(ADMIN_USER, "bad")).status == 401
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(request(port, "/metrics").text)
        for s in family.samples
    }
    attempts = "pg_doorman_web_auth_attempts_total"
    assert samples[(attempts, (("role", "anonymous"), ("source", "none")))] >= 3
    assert samples[(attempts, (("role", "rejected"), ("source", "basic")))] == 1
    assert samples[("pg_doorman_web_requests_total", (("role", "anonymous"), ("status_class", "4xx")))] >= 2


def test_admin_reload_good_and_bad(console: tuple[DoormanProcess, int]) -> None:
    proc, port = console
    assert request(port, "/api/admin/reload", auth=ADMIN).status == 405  # GET
    reloaded = request(port, "/api/admin/reload", auth=ADMIN, method="POST")
    assert reloaded.status == 200 and reloaded.json()["ok"] is True
    events = request(port, "/api/events", auth=ADMIN).json()
    assert any(e["kind"] == "RELOAD" for e in events)

    good = proc.config_path.read_text()
    broken = yaml.safe_load(good)
    broken["pools"]["appdb"]["pool_size"] = "many"
    proc.config_path.write_text(yaml.safe_dump(broken))
    refused = request(port, "/api/admin/reload", auth=ADMIN, method="POST")
    assert refused.status == 422 and "pool_size" in refused.json()["error"]
    events = request(port, "/api/events?limit=1", auth=ADMIN).json()
    assert len(events) == 1 and events[0]["kind"] == "CONFIG_VALIDATION_ERROR"
    with proc.connect() as conn:  # the old configuration still serves
        assert scalar(conn, "SELECT 2") == 2

    # A browser page of another site cannot make a logged-in admin's browser act (CSRF).
    proc.config_path.write_text(good)
    cross = request(port, "/api/admin/reload", auth=ADMIN, method="POST", headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    same = request(port, "/api/admin/reload", auth=ADMIN, method="POST", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 200


def test_admin_pause_resume_reconnect(console: tuple[DoormanProcess, int]) -> None:
    _, port = console
    assert request(port, "/api/admin/pause?db=nope", auth=ADMIN, method="POST").status == 404
    assert request(port, "/api/admin/pause?pool=bad", auth=ADMIN, method="POST").status == 400
    for action in ("pause", "resume", "reconnect"):
        reply = request(port, f"/api/admin/{action}?db=appdb", auth=ADMIN, method="POST")
        if callable(getattr(Pool, action, None)):
            assert reply.status == 200 and reply.json()["pools"] == ["appdb/app"]
        else:  # the pools' operation is not in this build yet: said so, nothing pretends
            assert reply.status == 501 and action.upper() in reply.json()["error"]
    assert request(port, "/api/admin/pause", method="POST", headers=JSON_CALLER).status == 401


def test_console_off_without_ui_or_with_a_weak_admin_password(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    config = web_config(make_pool_config(pg_trust), ui=True)
    config["general"] = {"admin_password": "admin"}
    proc = doorman(config)
    port = web_port(config)
    wait_for_port(port)
    assert request(port, "/api/pools", auth=(ADMIN_USER, "admin")).status == 404
    assert request(port, "/metrics").status == 200
    assert "web console stays off" in proc.log_text()

    config = web_config(make_pool_config(pg_trust))  # ui not set
    doorman(config)
    wait_for_port(web_port(config))
    assert request(web_port(config), "/api/version", auth=ADMIN).status == 404


def test_static_files_and_traversal(console: tuple[DoormanProcess, int]) -> None:
    _, port = console
    index = Path(__file__).resolve().parents[2] / "src" / "pg_doorman" / "observe" / "static" / "index.html"
    page = request(port, "/")
    if index.exists():  # the page is another part of the work; until it lands, "/" is a plain 404
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    else:
        assert page.status == 404
    for target in (
        b"/assets/../../../config/web.py",
        b"/assets/%2e%2e/%2e%2e/web.py",
        b"/assets/..%2f..%2fweb.py",
        b"/assets/%2fetc%2fpasswd",
        b"/assets/.%00/x",
        b"/../../etc/passwd",
    ):
        reply = raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.split(b" ")[1] in (b"400", b"404"), (target, reply[:80])
        assert b"import" not in reply and b"root:" not in reply


def test_web_requests_never_block_forwarding(console: tuple[DoormanProcess, int]) -> None:
    """A client stuck halfway through an HTTP request holds nothing: SQL and other scrapes go on."""
    proc, port = console
    with socket.create_connection(("127.0.0.1", port)) as stuck:
        stuck.sendall(b"GET /api/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ")
        with proc.connect() as conn:
            assert scalar(conn, "SELECT 3") == 3
        assert request(port, "/metrics").status == 200
    auth = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
    reply = raw_exchange(port, f"GET /api/version HTTP/1.0\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: "error" not in proc.log_tail(5).lower(), what="no error logged")
