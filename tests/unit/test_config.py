"""Configuration loading: formats, includes, error messages, validation and inheritance."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pg_doorman.config import (
    Config,
    ConfigError,
    General,
    check_config,
    classify_password,
    generate_example_config,
    load_config,
    startup_messages,
)

MD5 = "md5" + "0e9070b976a76706bb4bc4369e934be1"
SCRAM = (
    "SCRAM-SHA-256$4096:cGdfZG9vcm1hbl9zYWx0IQ==$5r9BH51vpnVOrZgEEJeNNWlLuJHAzaayuLGC9evqntA="
    ":sTGhVt58aAxg4jbDI0flvEOtb/vHUZ8MRnKMV3wzIyw="
)

MINIMAL_YAML = """\
general:
  admin_username: admin
  admin_password: secret
pools:
  mydb:
    users:
      - username: app
        password: "{md5}"
        pool_size: 10
""".replace("{md5}", MD5)

Write = Callable[[str, str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a (dedented) file into the test's directory and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return list(info.value.problems)


def single_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def yaml_with(general: str = "", pool: str = "", user: str = "", top: str = "") -> str:
    """MINIMAL_YAML with extra lines in general, pools.mydb, pools.mydb.users[0] or at the top level."""
    lines = ["general:", "  admin_username: admin", "  admin_password: secret"]
    lines += ["  " + line for line in textwrap.dedent(general).splitlines()]
    lines += ["pools:", "  mydb:"]
    lines += ["    " + line for line in textwrap.dedent(pool).splitlines()]
    lines += ["    users:", "      - username: app", f'        password: "{MD5}"', "        pool_size: 10"]
    lines += ["        " + line for line in textwrap.dedent(user).splitlines()]
    lines += textwrap.dedent(top).splitlines()
    return "\n".join(lines) + "\n"


# -- formats --------------------------------------------------------------------------------------------


def test_minimal_yaml_uses_defaults(write: Write) -> None:
    path = write("pg_doorman.yaml", MINIMAL_YAML)
    config = load_config(path)
    assert config.path == str(path)
    assert config.general == General(admin_username="admin", admin_password="secret")
    g = config.general
    assert (g.host, g.port, g.max_connections) == ("0.0.0.0", 6432, 8192)
    assert (g.connect_timeout, g.query_wait_timeout, g.idle_timeout, g.server_lifetime) == (3.0, 5.0, 600.0, 1200.0)
    assert g.max_message_size == 256 * 1024 * 1024
    assert g.message_size_to_be_stream == 1024 * 1024
    assert g.unix_socket_permissions == 0o600
    pool = config.pools["mydb"]
    assert (pool.name, pool.server_host, pool.server_port, pool.server_database) == (
        "mydb",
        "127.0.0.1",
        5432,
        "mydb",
    )
    assert pool.pool_mode == "transaction"
    (user,) = pool.users
    assert (user.username, user.password, user.pool_size, user.min_pool_size) == ("app", MD5, 10, 0)
    assert config.warnings == ()


def test_toml_array_of_tables_matches_yaml(write: Write) -> None:
    yaml_config = load_config(write("a.yaml", MINIMAL_YAML))
    toml_config = load_config(
        write(
            "a.toml",
            f"""
            [general]
            admin_username = "admin"
            admin_password = "secret"

            [pools.mydb]

            [[pools.mydb.users]]
            username = "app"
            password = "{MD5}"
            pool_size = 10
            """,
        )
    )
    assert toml_config.general == yaml_config.general
    assert toml_config.pools == yaml_config.pools


def test_non_yaml_extension_is_toml(write: Write) -> None:
    path = write("pg_doorman.conf", '[general]\nadmin_username = "a"\nadmin_password = "b"\n')
    assert load_config(path).pools == {}


def test_toml_numeric_user_tables_keep_index_order(write: Write) -> None:
    config = load_config(
        write(
            "a.toml",
            """
            [general]
            admin_username = "admin"
            admin_password = "secret"
            [pools.mydb.users.1]
            username = "second"
            password = ""
            pool_size = 1
            [pools.mydb.users.0]
            username = "first"
            password = ""
            pool_size = 1
            """,
        )
    )
    assert [user.username for user in config.pools["mydb"].users] == ["first", "second"]


def test_toml_non_numeric_user_key_is_rejected(write: Write) -> None:
    path = write(
        "a.toml",
        """
        [general]
        admin_username = "admin"
        admin_password = "secret"
        [pools.mydb.users.bob]
        username = "bob"
        password = ""
        pool_size = 1
        """,
    )
    assert "pools.mydb.users.bob: invalid user key: expected a numeric index" in single_problem(path)


def test_yaml_null_means_default(write: Write) -> None:
    config = load_config(write("a.yaml", yaml_with(general="port: ~\nunix_socket_dir: null")))
    assert config.general.port == 6432
    assert config.general.unix_socket_dir is None


def test_pools_may_be_missing_or_empty(write: Write) -> None:
    head = "general:\n  admin_username: admin\n  admin_password: secret\n"
    assert load_config(write("a.yaml", head)).pools == {}
    assert load_config(write("b.yaml", head + "pools: {}\n")).pools == {}
    assert load_config(write("c.yaml", head + "pools:\n  mydb: {}\n")).pools["mydb"].users == ()


def test_pool_names_and_users_keep_file_order(write: Write) -> None:
    text = MINIMAL_YAML + "  other:\n    users: []\n  abc:\n    users: []\n"
    assert list(load_config(write("a.yaml", text)).pools) == ["mydb", "other", "abc"]


def test_yaml_duplicate_key_is_an_error(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(general="port: 1\nport: 2")))
    assert "a.yaml" in problem and "duplicate key 'port'" in problem


def test_yaml_merge_keys_still_work(write: Write) -> None:
    text = MINIMAL_YAML + (
        "  base: &base\n    server_port: 5433\n    users: []\n  other:\n    <<: *base\n    server_port: 5434\n"
    )
    config = load_config(write("a.yaml", text))
    assert (config.pools["base"].server_port, config.pools["other"].server_port) == (5433, 5434)


def test_syntax_errors_name_the_file(write: Write) -> None:
    assert "bad.yaml: invalid YAML" in single_problem(write("bad.yaml", "general: [\n"))
    assert "bad.toml: invalid TOML" in single_problem(write("bad.toml", "[general\n"))


def test_missing_file(tmp_path: Path) -> None:
    assert single_problem(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


def test_top_level_must_be_a_mapping(write: Write) -> None:
    assert "expected a mapping of sections" in single_problem(write("a.yaml", "- 1\n- 2\n"))


# -- include --------------------------------------------------------------------------------------------


def test_include_merges_tables_appends_users_and_later_scalar_wins(write: Write) -> None:
    write(
        "conf.d/pools.toml",
        f"""
        [general]
        port = 7000

        [pools.mydb]
        server_port = 5433

        [[pools.mydb.users]]
        username = "extra"
        password = "{MD5}"
        pool_size = 3

        [pools.other]
        server_host = "db2"
        """,
    )
    write("conf.d/more.yaml", "general:\n  port: 7001\n")
    main = write("main.yaml", MINIMAL_YAML + "include:\n  files: [conf.d/pools.toml, conf.d/more.yaml]\n")
    config = load_config(main)
    assert config.general.port == 7001  # later file wins
    assert config.general.admin_username == "admin"  # untouched keys of the main file stay
    assert config.pools["mydb"].server_port == 5433
    assert [user.username for user in config.pools["mydb"].users] == ["app", "extra"]
    assert config.pools["other"].server_host == "db2"


def test_error_in_included_file_names_that_file(write: Write) -> None:
    write(
        "extra.yaml", "pools:\n  mydb:\n    users:\n      - username: x\n        password: ''\n        pool_sise: 1\n"
    )
    main = write("main.yaml", MINIMAL_YAML + "include:\n  files: [extra.yaml]\n")
    problems = problems_of(main)
    extra = str(main.parent / "extra.yaml")
    assert f"{extra}: pools.mydb.users[1].pool_sise: unknown key; did you mean 'pool_size'?" in problems
    assert f"{extra}: pools.mydb.users[1].pool_size: required key is missing" in problems


def test_include_problems(write: Write) -> None:
    write("nested.yaml", "include:\n  files: [x.yaml]\n")
    write("clash.yaml", "general: 5\n")
    main = write("main.yaml", MINIMAL_YAML + "include:\n  files: [missing.yaml, nested.yaml, clash.yaml]\n")
    text = "\n".join(problems_of(main))
    assert "missing.yaml: file not found" in text
    assert "nested.yaml: include: nested includes are not supported" in text
    assert "clash.yaml: general: cannot merge int into dict" in text


def test_include_must_list_files(write: Write) -> None:
    main = write("main.yaml", MINIMAL_YAML + "include:\n  file: [a.yaml]\n")
    assert "include.file: unknown key; expected only 'files'" in single_problem(main)


# -- unknown keys -------------------------------------------------------------------------------------


def test_unknown_user_key_suggests_nearest(write: Write) -> None:
    path = write("pg_doorman.yaml", MINIMAL_YAML.replace("pool_size: 10", "pool_size: 10\n        pool_sise: 5"))
    assert single_problem(path) == (f"{path}: pools.mydb.users[0].pool_sise: unknown key; did you mean 'pool_size'?")


def test_unknown_keys_everywhere_are_reported_together(write: Write) -> None:
    path = write(
        "a.yaml",
        yaml_with(general="conect_timeout: 5s", pool="server_hots: db", user="usernme: x", top="pool:\n  x: 1"),
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}: general.conect_timeout: unknown key; did you mean 'connect_timeout'?",
        f"{path}: pools.mydb.users[0].usernme: unknown key; did you mean 'username'?",
        f"{path}: pools.mydb.server_hots: unknown key; did you mean 'server_host'?",
        f"{path}: pool: unknown key; did you mean 'pools'?",
    ]


def test_unknown_key_without_close_match(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(general="zzz: 1")))
    assert problem.endswith("general.zzz: unknown key")


def test_original_only_settings_are_accepted_and_reported_not_active(write: Write) -> None:
    path = write("a.yaml", yaml_with(general="scaling_max_parallel_creates: 3", pool="scaling_fast_retries: 10"))
    notes = "\n".join(load_config(path).not_active)
    assert "general.scaling_max_parallel_creates" in notes
    assert "scaling_fast_retries" in notes


def test_key_path_quotes_unusual_pool_names(write: Write) -> None:
    path = write("a.yaml", MINIMAL_YAML.replace("mydb:", '"my.db":').replace("pool_size: 10", "pool_size: 0"))
    assert 'pools."my.db".users[0].pool_size' in single_problem(path)


# -- bad values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("general", "expected"),
    [
        (
            "connect_timeout: soon",
            "general.connect_timeout: expected a duration like '30s', '5m', '250ms' or integer milliseconds, "
            "got 'soon'",
        ),
        ("idle_timeout: -5s", "general.idle_timeout: must not be negative"),
        ("max_message_size: lots", "general.max_message_size: expected a size like '64KB'"),
        ("port: '6432'", "general.port: expected an integer, got string '6432'"),
        ("port: 70000", "general.port: expected an integer from 1 to 65535, got 70000"),
        ("port: 0", "general.port: expected an integer from 1 to 65535, got 0"),
        ("tcp_no_delay: 1", "general.tcp_no_delay: expected true or false, got integer 1"),
        ("host: [a]", "general.host: expected a string, got list"),
        ("max_connections: 0", "general.max_connections: expected an integer of at least 1, got 0"),
        (
            "unix_socket_mode: 600",
            "general.unix_socket_mode: expected an octal file mode like '0600', '660' or "
            "'0o660' (quoted, so it is not read as a decimal number), got 600",
        ),
        ("unix_socket_mode: '0800'", "general.unix_socket_mode: expected an octal file mode"),
        ("server_tls_mode: maybe", "general.server_tls_mode: expected one of 'disable', 'allow', 'prefer'"),
        ("startup_parameters: [a]", "general.startup_parameters: expected a table of parameter = value"),
    ],
)
def test_bad_general_values(write: Write, general: str, expected: str) -> None:
    path = write("pg_doorman.yaml", yaml_with(general=general))
    assert single_problem(path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("pool", "user", "expected"),
    [
        ("pool_mode: statement", "", "pools.mydb.pool_mode: expected one of 'transaction', 'session'"),
        ("server_port: 99999", "", "pools.mydb.server_port: expected an integer from 1 to 65535"),
        ("idle_timeout: 5 minutes", "", "pools.mydb.idle_timeout: expected a duration like '30s'"),
        ("", "server_lifetime: forever", "pools.mydb.users[0].server_lifetime: expected a duration"),
        ("", "pool_mode: Statement", "pools.mydb.users[0].pool_mode: expected one of"),
        ("users_extra: 1", "", "pools.mydb.users_extra: unknown key; did you mean 'users'?"),
    ],
)
def test_bad_pool_and_user_values(write: Write, pool: str, user: str, expected: str) -> None:
    path = write("pg_doorman.yaml", yaml_with(pool=pool, user=user))
    assert single_problem(path).startswith(f"{path}: {expected}")


def test_all_problems_are_collected_one_per_line(write: Write) -> None:
    path = write(
        "a.yaml",
        yaml_with(general="port: x\nconnect_timeout: y", pool="server_port: z", user="min_pool_size: 99"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{path}: ") for line in lines)


# -- validation -----------------------------------------------------------------------------------------


def test_required_keys(write: Write) -> None:
    assert single_problem(write("a.yaml", "pools: {}\n")).endswith("general: required section is missing")
    problems = problems_of(write("b.yaml", "general: {}\npools:\n  db:\n    users:\n      - {}\n"))
    assert [line.split(": ", 1)[1] for line in problems] == [
        "general.admin_username: required key is missing",
        "general.admin_password: required key is missing",
        "pools.db.users[0].username: required key is missing",
        "pools.db.users[0].password: required key is missing",
        "pools.db.users[0].pool_size: required key is missing",
    ]


def test_empty_password_is_allowed_but_empty_username_is_not(write: Write) -> None:
    config = load_config(write("a.yaml", MINIMAL_YAML.replace(MD5, "")))
    assert config.pools["mydb"].users[0].password_kind == "empty"
    problem = single_problem(write("b.yaml", MINIMAL_YAML.replace("username: app", "username: ''")))
    assert "pools.mydb.users[0].username: must not be empty" in problem


def test_duplicate_usernames(write: Write) -> None:
    text = MINIMAL_YAML + "      - username: app\n        password: ''\n        pool_size: 1\n"
    problem = single_problem(write("a.yaml", text))
    assert "pools.mydb.users[1].username: duplicate username 'app' (already defined at pools.mydb.users[0])" in (
        problem
    )


def test_pool_size_and_min_pool_size(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(user="min_pool_size: 11")))
    assert "pools.mydb.users[0].min_pool_size: must not exceed pool_size (10), got 11" in problem
    problem = single_problem(write("b.yaml", MINIMAL_YAML.replace("pool_size: 10", "pool_size: 0")))
    assert "pools.mydb.users[0].pool_size: expected an integer of at least 1, got 0" in problem


def test_server_password_needs_server_username(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(user="server_password: pw")))
    assert "pools.mydb.users[0].server_password: requires server_username" in problem


@pytest.mark.parametrize(
    ("password", "kind"),
    [("", "empty"), (MD5, "md5"), (SCRAM, "scram"), ("hunter2", "plain"), ("md5 is nice", "plain")],
)
def test_password_kinds(write: Write, password: str, kind: str) -> None:
    config = load_config(write("a.yaml", MINIMAL_YAML.replace(MD5, password)))
    assert config.pools["mydb"].users[0].password_kind == kind
    assert classify_password(password) == kind


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (MD5[:-1], "malformed MD5 verifier"),
        ("md5" + "z" * 32, "malformed MD5 verifier"),
        ("SCRAM-SHA-256$4096:salt", "malformed SCRAM verifier"),
        (SCRAM.replace("5r9BH51vpn", "5r9BH51"), "StoredKey must be 32 bytes"),
        ("SCRAM-SHA-256$0:cGdf$" + SCRAM.split("$", 2)[2], "iteration count"),
    ],
)
def test_malformed_verifiers_are_rejected(write: Write, password: str, message: str) -> None:
    problem = single_problem(write("a.yaml", MINIMAL_YAML.replace(MD5, password)))
    assert "pools.mydb.users[0].password: " in problem and message in problem


@pytest.mark.parametrize("name", ["user", "Database", "replication", "options", "role", "_pq_.x"])
def test_reserved_startup_parameters(write: Write, name: str) -> None:
    problem = single_problem(write("a.yaml", yaml_with(pool=f"startup_parameters:\n  {name}: x")))
    assert "pools.mydb.startup_parameters." in problem and name in problem


def test_startup_parameter_names_and_values(write: Write) -> None:
    text = yaml_with(general="startup_parameters:\n  jit: off\n  work_mem: 64MB\n  Search_Path: app")
    config = load_config(write("a.yaml", text))
    assert config.general.startup_parameters == {"jit": "off", "work_mem": "64MB", "search_path": "app"}
    problem = single_problem(write("b.yaml", yaml_with(pool="startup_parameters:\n  'bad name': x")))
    assert "not a valid parameter name" in problem
    problem = single_problem(write("c.yaml", yaml_with(pool="startup_parameters:\n  JIT: on\n  jit: off")))
    assert "set twice" in problem


def test_startup_parameters_size_limit(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(pool="startup_parameters:\n  search_path: " + "x" * 10_000)))
    assert "pools.mydb.startup_parameters: too large" in problem


def test_admin_database_names_are_reserved(write: Write) -> None:
    problem = single_problem(write("a.yaml", MINIMAL_YAML.replace("mydb:", "pgbouncer:")))
    assert "pools.pgbouncer: 'pgbouncer' is the admin console's database name" in problem


def test_prepared_statements_need_a_cache(write: Write) -> None:
    problem = single_problem(write("a.yaml", yaml_with(general="prepared_statements_cache_size: 0")))
    assert "general.prepared_statements_cache_size: must be greater than 0" in problem
    problem = single_problem(write("b.yaml", yaml_with(pool="prepared_statements_cache_size: 0")))
    assert "pools.mydb.prepared_statements_cache_size: must be greater than 0" in problem
    text = yaml_with(general="prepared_statements: false\nprepared_statements_cache_size: 0")
    assert load_config(write("c.yaml", text)).general.prepared_statements is False


def test_tls_and_hba_rules(write: Write, tmp_path: Path) -> None:
    write("server.crt", "cert")
    problem = single_problem(write("a.yaml", yaml_with(general="tls_certificate: server.crt")))
    assert "set both tls_certificate and tls_private_key" in problem
    problem = single_problem(write("b.yaml", yaml_with(general="tls_mode: require")))
    assert "general.tls_mode: 'require' needs tls_certificate" in problem
    problem = single_problem(write("c.yaml", yaml_with(general="tls_ca_cert: nope.crt")))
    assert f"general.tls_ca_cert: file not found: {tmp_path / 'nope.crt'}" in problem
    problem = single_problem(write("d.yaml", yaml_with(general="hba: [10.0.0.0/8]\npg_hba: 'local all all trust'")))
    assert "use either 'hba' or 'pg_hba'" in problem


def test_tls_files_resolve_relative_to_the_config(write: Write, tmp_path: Path) -> None:
    write("tls/server.crt", "cert")
    write("tls/server.key", "key")
    text = yaml_with(general="tls_certificate: tls/server.crt\ntls_private_key: tls/server.key\ntls_mode: REQUIRE")
    general = load_config(write("a.yaml", text)).general
    assert general.tls_certificate == str(tmp_path / "tls/server.crt")
    assert general.tls_mode == "require"
    assert general.server_tls_mode == "allow"


def test_pg_hba_forms(write: Write, tmp_path: Path) -> None:
    write("hba.conf", "host all all 0.0.0.0/0 md5\n")
    inline = load_config(write("a.yaml", yaml_with(general="pg_hba: 'local all all trust'"))).general.pg_hba
    assert inline is not None and inline.content == "local all all trust" and inline.path is None
    table = load_config(write("b.yaml", yaml_with(general="pg_hba: {path: hba.conf}"))).general.pg_hba
    assert table is not None and table.path == str(tmp_path / "hba.conf")
    problem = single_problem(write("c.yaml", yaml_with(general="pg_hba: {path: hba.conf, content: x}")))
    assert "general.pg_hba: expected exactly one of 'path' or 'content'" in problem
    hba = load_config(write("d.yaml", yaml_with(general="hba: [10.0.0.0/8, 127.0.0.1/32]"))).general.hba
    assert hba == ("10.0.0.0/8", "127.0.0.1/32")


def test_deprecated_cache_size_alias(write: Write, caplog: pytest.LogCaptureFixture) -> None:
    path = write("a.yaml", yaml_with(general="client_prepared_statements_cache_size: 16"))
    with caplog.at_level(logging.WARNING, logger="pg_doorman.config"):
        config = load_config(path)
    assert config.general.client_anonymous_prepared_cache_size == 16
    assert config.warnings == (
        f"{path}: general.client_prepared_statements_cache_size: deprecated key; "
        "use 'client_anonymous_prepared_cache_size'",
    )
    assert "deprecated key" in startup_messages(config)[0]  # logged by the caller (startup, reload)
    both = "client_prepared_statements_cache_size: 16\nclient_anonymous_prepared_cache_size: 8"
    assert "set only 'client_anonymous_prepared_cache_size'" in single_problem(write("b.yaml", yaml_with(general=both)))


# -- inheritance ----------------------------------------------------------------------------------------

INHERITANCE_TOML = f"""
[general]
admin_username = "admin"
admin_password = "secret"
connect_timeout = "2s"
idle_timeout = "10m"
server_lifetime = 3600000
query_wait_timeout = "250ms"
application_name = "global_app"
prepared_statements_cache_size = 100
client_anonymous_prepared_cache_size = 7
sync_server_parameters = false
server_round_robin = true
startup_parameters = {{ jit = "off", work_mem = "4MB" }}

[pools.mydb]
server_host = "db.internal"
server_port = 5433
server_database = "real_db"
pool_mode = "Session"
connect_timeout = "1.5s"
idle_timeout = 120000
application_name = "pool_app"
prepared_statements_cache_size = 50
log_client_parameter_status_changes = true
cleanup_server_connections = false
startup_parameters = {{ work_mem = "64MB" }}

[[pools.mydb.users]]
username = "plain"
password = "{MD5}"
pool_size = 4

[[pools.mydb.users]]
username = "tuned"
password = "{SCRAM}"
pool_size = 8
min_pool_size = 2
pool_mode = "transaction"
server_lifetime = "30m"
idle_timeout = "1m"
application_name = "user_app"
server_username = "backend_role"
server_password = "backend_pw"

[pools.bare]
[[pools.bare.users]]
username = "plain"
password = ""
pool_size = 1
"""


@pytest.fixture
def inherited(write: Write) -> Config:
    return load_config(write("inherit.toml", INHERITANCE_TOML))


def test_pool_inherits_from_general(inherited: Config) -> None:
    settings = inherited.pool_settings("mydb", "plain")
    assert settings is not None
    assert (settings.database, settings.username, settings.password) == ("mydb", "plain", MD5)
    assert (settings.server_host, settings.server_port, settings.server_database) == ("db.internal", 5433, "real_db")
    assert settings.server_username == "plain"  # default: the client's username
    assert settings.server_password is None  # passthrough
    assert settings.password_kind == "md5"
    assert settings.pool_mode == "session"
    assert settings.prepared_statements is False  # no remapping in session mode
    assert (settings.pool_size, settings.min_pool_size) == (4, 0)
    assert settings.connect_timeout == 1.5
    assert settings.idle_timeout == 120.0
    assert settings.server_lifetime == 3600.0
    assert settings.query_wait_timeout == 0.25
    assert settings.server_idle_check_timeout == 60.0
    assert settings.application_name == "pool_app"
    assert settings.prepared_statements_cache_size == 50
    assert settings.server_prepared_statements_cache_size == 50
    assert settings.client_anonymous_prepared_cache_size == 7
    assert settings.startup_parameters == {"jit": "off", "work_mem": "64MB"}
    assert settings.cleanup_server_connections is False
    assert settings.log_client_parameter_status_changes is True
    assert settings.sync_server_parameters is False
    assert settings.server_round_robin is True


def test_user_overrides_pool(inherited: Config) -> None:
    settings = inherited.pool_settings("mydb", "tuned")
    assert settings is not None
    assert settings.pool_mode == "transaction"
    assert settings.prepared_statements is True
    assert (settings.pool_size, settings.min_pool_size) == (8, 2)
    assert settings.server_lifetime == 1800.0
    assert settings.idle_timeout == 60.0
    assert settings.application_name == "user_app"
    assert (settings.server_username, settings.server_password) == ("backend_role", "backend_pw")
    assert settings.password_kind == "scram"


def test_general_defaults_fill_a_bare_pool(inherited: Config) -> None:
    settings = inherited.pool_settings("bare", "plain")
    assert settings is not None
    assert (settings.server_host, settings.server_port, settings.server_database) == ("127.0.0.1", 5432, "bare")
    assert settings.pool_mode == "transaction"
    assert settings.connect_timeout == 2.0
    assert settings.idle_timeout == 600.0
    assert settings.application_name == "global_app"
    assert settings.prepared_statements_cache_size == 100
    assert settings.server_prepared_statements_cache_size == 100
    assert settings.startup_parameters == {"jit": "off", "work_mem": "4MB"}
    assert settings.cleanup_server_connections is True


def test_unknown_pool_or_user(inherited: Config) -> None:
    assert inherited.pool_settings("nope", "plain") is None
    assert inherited.pool_settings("mydb", "nobody") is None


def test_all_pool_settings_in_file_order(inherited: Config) -> None:
    pairs = [(s.database, s.username) for s in inherited.all_pool_settings()]
    assert pairs == [("mydb", "plain"), ("mydb", "tuned"), ("bare", "plain")]


def test_server_prepared_cache_defaults(write: Write) -> None:
    text = yaml_with(general="server_prepared_statements_cache_size: 0\nprepared_statements_cache_size: 10")
    settings = load_config(write("a.yaml", text)).pool_settings("mydb", "app")
    assert settings is not None
    assert settings.server_prepared_statements_cache_size == 0  # explicit 0 is kept, not replaced
    assert settings.client_anonymous_prepared_cache_size == 10


def test_config_objects_are_immutable(inherited: Config) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        inherited.general.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        inherited.pools["mydb"].users[0].pool_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "seconds"), [("'90s'", 90.0), ("1500", 1.5), ("'2m'", 120.0), ("'1h'", 3600.0), ("'0.5s'", 0.5)]
)
def test_durations_accepted_in_pools_and_users(write: Write, value: str, seconds: float) -> None:
    text = yaml_with(
        pool=f"connect_timeout: {value}\nserver_lifetime: {value}",
        user=f"idle_timeout: {value}",
    )
    settings = load_config(write("a.yaml", text)).pool_settings("mydb", "app")
    assert settings is not None
    assert (settings.connect_timeout, settings.server_lifetime, settings.idle_timeout) == (seconds, seconds, seconds)


# -- pg_doorman -t --------------------------------------------------------------------------------------


def test_check_config_success(write: Write) -> None:
    path = write("pg_doorman.yaml", MINIMAL_YAML)
    report = check_config(path)
    assert report.ok
    assert report.stdout == (
        f"pg_doorman: the configuration file {path} syntax is ok",
        f"pg_doorman: configuration file {path} test is successful",
    )
    assert report.stderr == ()


def test_check_config_failure(write: Write) -> None:
    path = write("pg_doorman.yaml", yaml_with(general="port: x\nhots: y"))
    report = check_config(path)
    assert not report.ok
    assert report.stderr == (
        f"Config parse error: {path}: general.port: expected an integer, got string 'x'",
        f"Config parse error: {path}: general.hots: unknown key; did you mean 'host'?",
    )


# -- generated example ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("yaml", "example.yaml"), ("toml", "example.toml")])
def test_example_config_loads_back(write: Write, fmt: str, name: str) -> None:
    text = generate_example_config(fmt)
    assert text.startswith("# pg_doorman configuration")
    config = load_config(write(name, text))
    assert config.general.admin_username == "admin"
    assert config.general.connect_timeout == General.__dataclass_fields__["connect_timeout"].default
    assert [s.username for s in config.all_pool_settings()] == ["app", "reporting"]
    reporting = config.pool_settings("mydb", "reporting")
    assert reporting is not None and reporting.pool_mode == "session"
    assert reporting.password_kind == "scram"


def test_example_formats_agree(write: Write) -> None:
    from_yaml = load_config(write("e.yaml", generate_example_config("yaml")))
    from_toml = load_config(write("e.toml", generate_example_config("toml")))
    assert from_yaml.general == from_toml.general
    assert from_yaml.pools == from_toml.pools


def test_example_documents_every_general_setting() -> None:
    text = generate_example_config("yaml")
    for name in General.__dataclass_fields__:
        assert f"{name}: " in text, name


def test_example_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="expected 'yaml' or 'toml'"):
        generate_example_config("ini")
