"""``general.pg_hba`` / ``general.hba`` in the configuration: parsed at load (errors with file:line), warnings for
entries that never match, the file re-read at every load so a reload sees a changed file."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pg_doorman.auth.hba import Method
from pg_doorman.config import ConfigError, check_config, load_config

BASE = (
    '[general]\nadmin_username = "a"\nadmin_password = "b"\n{general}\n'
    '[pools.db]\nserver_host = "127.0.0.1"\n[[pools.db.users]]\nusername = "u"\npassword = "p"\npool_size = 1\n'
)


def write(tmp_path: Path, general: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(BASE.format(general=general))
    return path


def method_for(path: Path, address: str, user: str = "u") -> Method | None:
    rules = load_config(path).access_rules
    assert rules is not None
    rule = rules.match("host", "db", user, ipaddress.ip_address(address), False)
    return rule.method if rule is not None else None


def test_inline_string_and_content_table(tmp_path: Path) -> None:
    inline = write(tmp_path, 'pg_hba = """\nhost all all 127.0.0.1/32 trust\n"""', "a.toml")
    assert method_for(inline, "127.0.0.1") is Method.TRUST and method_for(inline, "127.0.0.2") is None
    table = write(tmp_path, '[general.pg_hba]\ncontent = "host all all 0.0.0.0/0 md5"', "b.toml")
    assert method_for(table, "10.0.0.1") is Method.MD5
    report = check_config(inline)
    assert report.ok, report.stderr


def test_no_rules_means_none(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).access_rules is None
    assert load_config(write(tmp_path, "hba = []")).access_rules is None  # the original: empty list allows all


def test_inline_errors_name_config_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'pg_hba = """\nhost all all 127.0.0.1/32 trust\nhost all all localhost md5\n"""')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f'{path}: general.pg_hba: {path} (general.pg_hba):2: host name "localhost"')
    report = check_config(path)
    assert not report.ok and "general.pg_hba" in report.stderr[-1]


def test_file_is_read_at_every_load(tmp_path: Path) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n")
    path = write(tmp_path, 'pg_hba = {path = "pg_hba.conf"}')
    first = load_config(path)
    assert method_for(path, "127.0.0.1") is Method.TRUST
    hba.write_text("host all all 127.0.0.1/32 reject\n")
    second = load_config(path)
    assert second != first  # a reload with only the hba file changed is a change
    assert method_for(path, "127.0.0.1") is Method.REJECT
    hba.write_text("host all all 127.0.0.1/32 md5\nhots all all 0.0.0.0/0 trust\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert list(info.value.problems) == [f'{path}: general.pg_hba: {hba}:2: invalid connection type "hots"']


def test_missing_file_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'pg_hba = {path = "nope.conf"}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert list(info.value.problems) == [f"{path}: general.pg_hba.path: file not found: {tmp_path / 'nope.conf'}"]


def test_include_relative_to_inline_config(tmp_path: Path) -> None:
    (tmp_path / "users").write_text("u\n")
    path = write(tmp_path, 'pg_hba = "host all @users 0.0.0.0/0 trust"')
    assert method_for(path, "10.0.0.1") is Method.TRUST and method_for(path, "10.0.0.1", user="v") is None


def test_warnings_for_entries_that_never_match(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'pg_hba = "local all +ops md5\\nlocal all all peer"'))
    assert len(config.warnings) == 2
    assert "this rule never matches" in config.warnings[0] and "not supported by pg_doorman" in config.warnings[1]


def test_legacy_cidr_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'hba = ["10.0.0.0/8"]')
    config = load_config(path)
    assert method_for(path, "10.1.1.1") is Method.MD5 and method_for(path, "127.0.0.1") is None
    assert any("legacy allow-list" in w for w in config.warnings)
    assert config.refusals == ()
    with pytest.raises(ConfigError, match=r"general.hba: general.hba\[0\]: invalid CIDR range 'ten'"):
        load_config(write(tmp_path, 'hba = ["ten"]'))
    with pytest.raises(ConfigError, match="use either 'hba' or 'pg_hba'"):
        load_config(write(tmp_path, 'hba = ["10.0.0.0/8"]\npg_hba = "local all all trust"'))
