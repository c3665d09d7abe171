"""The ``web`` section (alias ``prometheus``) of the configuration: defaults, every key of the original, the alias,
SSO accepted but reported as not active, and the console refused with a weak admin password."""

from __future__ import annotations

from pathlib import Path

import pytest

from pg_doorman.config import ConfigError, load_config
from pg_doorman.config.web import WebConfig

BASE = """
general:
  admin_username: admin
  admin_password: {admin_password}
pools:
  db:
    users:
      - username: app
        password: app_pass
        pool_size: 2
"""


def load(tmp_path: Path, extra: str, admin_password: str = "s3cret") -> tuple[WebConfig, tuple[str, ...]]:
    path = tmp_path / "pg_doorman.yaml"
    path.write_text(BASE.format(admin_password=admin_password) + extra)
    config = load_config(path)
    return config.web, config.warnings


def test_defaults_without_a_section(tmp_path: Path) -> None:
    web, _ = load(tmp_path, "")
    assert web == WebConfig()
    assert (web.enabled, web.host, web.port, web.ui, web.log_tap_max_entries) == (False, "0.0.0.0", 9127, False, 8192)


@pytest.mark.parametrize("section", ["web", "prometheus"])
def test_every_key_of_the_original(tmp_path: Path, section: str) -> None:
    web, warnings = load(
        tmp_path,
        f"""
{section}:
  enabled: true
  host: 127.0.0.1
  port: 9300
  ui: true
  ui_anonymous: true
  log_tap_max_entries: 100
  sso_enabled: false
  sso_proxy_url: https://sso.example/
  sso_public_key_file: /etc/sso.pem
  sso_audience: [pg]
  sso_allowed_users: [alice]
  sso_groups_claim: roles
  sso_admin_groups: [dba]
  sso_require_https: true
  trusted_proxies: [10.0.0.0/8]
""",
    )
    assert warnings == ()
    assert (web.enabled, web.host, web.port, web.ui, web.ui_anonymous) == (True, "127.0.0.1", 9300, True, True)
    assert web.section == section and web.sso_allowed_users == ("alice",) and web.trusted_proxies == ("10.0.0.0/8",)
    assert web.ui_enabled("s3cret")


def test_sso_is_accepted_and_reported_not_active(tmp_path: Path) -> None:
    web, warnings = load(tmp_path, "web:\n  enabled: true\n  sso_enabled: true\n")
    assert web.sso_enabled
    assert any("web.sso_enabled" in w and "not active yet" in w for w in warnings)


@pytest.mark.parametrize("weak", ['""', "admin"])
def test_console_stays_off_with_a_weak_admin_password(tmp_path: Path, weak: str) -> None:
    web, warnings = load(tmp_path, "web:\n  enabled: true\n  ui: true\n", admin_password=weak)
    assert not web.ui_enabled(weak.strip('"'))
    assert any("web console stays off" in w for w in warnings)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("web:\n  port: 70000\n", "web.port: expected an integer from 1 to 65535"),
        ("web:\n  enabled: yes please\n", "web.enabled: expected true or false"),
        ("web:\n  uii: true\n", "web.uii: unknown key; did you mean 'ui'?"),
        ("web:\n  enabled: true\nprometheus:\n  enabled: true\n", "keep one of the two sections"),
        ("web: 9127\n", "web: expected a table"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert problem in str(caught.value)
