"""auth_query without PostgreSQL: what a lookup result is trusted to say, the caches (TTL, bounds, coalescing),
the login with refetch after a failure, the configuration section, and the registry's auth_query pools."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pg_doorman.auth import auth_query as aq_module
from pg_doorman.auth.auth_query import AuthQuery
from pg_doorman.auth.auth_query_executor import (
    LookupUnavailable,
    QueryResult,
    _lookup_messages,
    _parse_row_description,
    password_from_result,
)
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.md5 import md5_salted_response, md5_verifier
from pg_doorman.auth.policy import choose_method
from pg_doorman.auth.scram import make_scram_verifier
from pg_doorman.config import Config, ConfigError, load_config
from pg_doorman.config.schema import AuthQueryConfig, PoolSettings
from pg_doorman.protocol.errors import PoolerError
from pg_doorman.registry import DYNAMIC_POOL_GRACE, PoolRegistry

MD5_ALICE = md5_verifier("alice_pw", "alice")
SCRAM_BOB = make_scram_verifier("bob_pw", salt=b"0123456789abcdef")
TEXT = 25


def result(*rows: tuple[bytes | None, ...], columns: tuple[tuple[str, int], ...] | None = None) -> QueryResult:
    return QueryResult(columns or (("usename", 19), ("passwd", TEXT)), tuple(rows))


# ------------------------------------------------------------------------------------- result shape


def test_result_zero_rows_is_no_user() -> None:
    assert password_from_result(result()) is None


def test_result_md5_and_scram_are_taken() -> None:
    assert password_from_result(result((b"alice", MD5_ALICE.encode()))) == MD5_ALICE
    assert password_from_result(result((b"bob", SCRAM_BOB.encode()))) == SCRAM_BOB


@pytest.mark.parametrize("value", [None, b"", b"plaintext", b"md5abc", b"SCRAM-SHA-256$x", b"\xff\xfe"])
def test_result_null_empty_or_not_a_verifier_is_no_user(value: bytes | None) -> None:
    assert password_from_result(result((b"alice", value))) is None


def test_result_column_choice() -> None:
    only = (("secret", TEXT),)
    assert password_from_result(result((MD5_ALICE.encode(),), columns=only)) == MD5_ALICE
    both = (("password", TEXT), ("passwd", TEXT))
    assert password_from_result(result((b"wrong", MD5_ALICE.encode()), columns=both)) == MD5_ALICE
    named = (("u", TEXT), ("password", 1043))
    assert password_from_result(result((b"alice", MD5_ALICE.encode()), columns=named)) == MD5_ALICE


def test_result_more_than_one_row_is_refused() -> None:
    with pytest.raises(LookupUnavailable, match="2 rows"):
        password_from_result(result((b"a", MD5_ALICE.encode()), (b"a", MD5_ALICE.encode())))


def test_result_without_password_column_or_with_wrong_type_is_refused() -> None:
    with pytest.raises(LookupUnavailable, match="no 'passwd'"):
        password_from_result(result((b"a", b"b"), columns=(("x", TEXT), ("y", TEXT))))
    with pytest.raises(LookupUnavailable, match="type oid 17"):
        password_from_result(result((b"a", MD5_ALICE.encode()), columns=(("u", TEXT), ("passwd", 17))))


def test_row_description_parsing() -> None:
    def field(name: str, oid: int) -> bytes:
        return (
            name.encode()
            + b"\x00"
            + (0).to_bytes(4, "big")
            + (0).to_bytes(2, "big")
            + oid.to_bytes(4, "big")
            + (b"\xff\xff" + b"\xff\xff\xff\xff" + b"\x00\x00")
        )

    body = (2).to_bytes(2, "big") + field("usename", 19) + field("passwd", 25)
    assert _parse_row_description(body) == (("usename", 19), ("passwd", 25))


def test_user_name_travels_as_a_bind_parameter() -> None:
    """The name is a Bind value: quotes in it never reach the SQL text."""
    name = "x'; DROP TABLE t; --"
    wire = _lookup_messages("SELECT passwd FROM auth.lookup($1)", name)
    parse_end = wire.index(b"B")
    assert name.encode() not in wire[:parse_end]
    assert name.encode() in wire[parse_end:]
    assert wire.endswith(b"S\x00\x00\x00\x04")


# ------------------------------------------------------------------------------------- cache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLookup:
    """PostgreSQL's answers by user name; counts the queries; can fail or stall."""

    def __init__(self, passwords: dict[str, str | None]) -> None:
        self.passwords = passwords
        self.calls: list[str] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, user: str) -> str | None:
        self.calls.append(user)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise LookupUnavailable("connection refused")
        return self.passwords.get(user)


def template(**overrides: Any) -> PoolSettings:
    base: dict[str, Any] = dict(
        database="appdb", username="", password="", server_host="127.0.0.1", server_port=5432,
        server_database="appdb", server_username="", server_password=None, pool_mode="transaction",
        pool_size=5, min_pool_size=0, connect_timeout=3.0, idle_timeout=600.0, server_lifetime=1200.0,
        query_wait_timeout=5.0, server_idle_check_timeout=60.0, cleanup_server_connections=True,
        server_reset_query="DISCARD ALL", server_reset_query_always=False, application_name="pg_doorman",
        prepared_statements=True, prepared_statements_cache_size=100, server_prepared_statements_cache_size=100,
        client_anonymous_prepared_cache_size=100, sync_server_parameters=False, startup_parameters={},
        server_round_robin=False, log_client_parameter_status_changes=False, max_db_connections=0,
        min_connection_lifetime=30.0, reserve_pool_size=0, reserve_pool_timeout=3.0, guaranteed_pool_size=0,
    )  # fmt: skip
    base.update(overrides)
    return PoolSettings(**base)


def make_auth(
    passwords: dict[str, str | None], clock: FakeClock | None = None, **config: Any
) -> tuple[AuthQuery, FakeLookup, FakeClock]:
    lookup = FakeLookup(passwords)
    clock = clock or FakeClock()
    settings = {"query": "SELECT passwd FROM auth.lookup($1)", "user": "doorman_auth", **config}
    auth = AuthQuery(AuthQueryConfig(**settings), template(), fetch=lookup, clock=clock)
    return auth, lookup, clock


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_positive_cache_hit_until_ttl() -> None:
    auth, lookup, clock = make_auth({"alice": MD5_ALICE}, cache_ttl=60.0)

    async def go() -> None:
        first = await auth.lookup("alice")
        assert first.password == MD5_ALICE and first.fresh
        second = await auth.lookup("alice")
        assert second.password == MD5_ALICE and not second.fresh
        clock.now += 61
        third = await auth.lookup("alice")
        assert third.fresh

    run(go())
    assert lookup.calls == ["alice", "alice"]
    assert (auth.stats.cache_hits, auth.stats.cache_misses) == (1, 2)


def test_negative_cache_has_its_own_ttl() -> None:
    auth, lookup, clock = make_auth({}, cache_failure_ttl=5.0)

    async def go() -> None:
        assert (await auth.lookup("ghost")).password is None
        assert (await auth.lookup("ghost")).password is None
        clock.now += 6
        assert (await auth.lookup("ghost")).password is None

    run(go())
    assert lookup.calls == ["ghost", "ghost"]


def test_concurrent_lookups_of_one_user_share_one_query() -> None:
    auth, lookup, _ = make_auth({"alice": MD5_ALICE})

    async def go() -> list[str | None]:
        lookup.gate = asyncio.Event()
        tasks = [asyncio.create_task(auth.lookup("alice")) for _ in range(20)]
        await asyncio.sleep(0.01)
        lookup.gate.set()
        return [found.password for found in await asyncio.gather(*tasks)]

    assert run(go()) == [MD5_ALICE] * 20
    assert lookup.calls == ["alice"]


def test_a_client_giving_up_does_not_cancel_the_lookup_for_the_others() -> None:
    auth, lookup, _ = make_auth({"alice": MD5_ALICE})

    async def go() -> str | None:
        lookup.gate = asyncio.Event()
        first = asyncio.create_task(auth.lookup("alice"))
        second = asyncio.create_task(auth.lookup("alice"))
        await asyncio.sleep(0.01)
        first.cancel()
        lookup.gate.set()
        return (await second).password

    assert run(go()) == MD5_ALICE


def test_lookup_failure_refuses_with_58000_and_is_not_cached() -> None:
    auth, lookup, _ = make_auth({"alice": MD5_ALICE})
    lookup.fail = True

    async def go() -> None:
        with pytest.raises(PoolerError) as err:
            await auth.lookup("alice")
        assert err.value.sqlstate == "58000"
        lookup.fail = False
        assert (await auth.lookup("alice")).password == MD5_ALICE

    run(go())
    assert auth.stats.executor_errors == 1
    assert lookup.calls == ["alice", "alice"]


def test_names_longer_than_postgres_allows_are_never_looked_up() -> None:
    auth, lookup, _ = make_auth({})
    found = run(auth.lookup("x" * 64))
    assert found.password is None
    assert lookup.calls == [] and auth.cache_entries() == 0


def test_flood_of_unknown_names_stays_bounded_and_keeps_known_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aq_module, "MAX_CACHED_USERS", 50)
    auth, lookup, _ = make_auth({"alice": MD5_ALICE})

    async def go() -> None:
        await auth.lookup("alice")
        for index in range(500):
            await auth.lookup(f"random{index}")
        assert (await auth.lookup("alice")).password == MD5_ALICE

    run(go())
    assert auth.cache_entries() <= 51
    assert lookup.calls.count("alice") == 1


def test_in_flight_lookups_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aq_module, "MAX_IN_FLIGHT", 3)
    auth, lookup, _ = make_auth({})

    async def go() -> int:
        lookup.gate = asyncio.Event()
        tasks = [asyncio.create_task(auth.lookup(f"u{index}")) for index in range(10)]
        await asyncio.sleep(0.01)
        lookup.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return sum(isinstance(outcome, PoolerError) for outcome in outcomes)

    assert run(go()) == 7
    assert len(lookup.calls) == 3


def test_prune_drops_expired_entries() -> None:
    auth, _, clock = make_auth({"alice": MD5_ALICE}, cache_ttl=10.0, cache_failure_ttl=1.0)
    run(auth.lookup("alice"))
    run(auth.lookup("ghost"))
    assert auth.cache_entries() == 2
    clock.now += 2
    auth.prune()
    assert auth.cache_entries() == 1
    clock.now += 10
    auth.prune()
    assert auth.cache_entries() == 0


# ------------------------------------------------------------------------------------- login


def md5_client(password_verifier: str) -> Callable[[ClientLogin], Any]:
    """A client answering an MD5 challenge as one knowing the password of ``password_verifier``."""

    async def exchange(login: ClientLogin) -> ClientLogin:
        request = login.start()
        if int.from_bytes(request[5:9], "big") == 5:
            body = md5_salted_response(password_verifier, request[9:13]) + b"\x00"
        else:
            body = b"SCRAM-SHA-256\x00" + (32).to_bytes(4, "big") + b"n,,n=,r=abcdefghijklmnopqrstuvwx"
        login.feed(0x70, body)
        if not login.done:
            raise AssertionError("not an MD5 exchange")
        return login

    return exchange


def decide(user: str) -> Callable[[str | None], Any]:
    return lambda stored: choose_method(user, stored)


def test_login_with_the_right_md5_password() -> None:
    auth, _, _ = make_auth({"alice": MD5_ALICE})
    stored, _login = run(auth.login("alice", decide("alice"), md5_client(MD5_ALICE)))
    assert stored == MD5_ALICE
    assert auth.stats.auth_success == 1


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    auth, _, _ = make_auth({"alice": MD5_ALICE})
    wrong = md5_verifier("nope", "alice")

    async def fail(user: str) -> LoginFailed:
        try:
            await auth.login(user, decide(user), md5_client(wrong))
        except LoginFailed as err:
            return err
        except AssertionError:  # the doomed exchange of an unknown user is SCRAM: fed garbage, it fails alike
            raise
        raise AssertionError("login succeeded")

    err = run(fail("alice"))
    assert err.sqlstate == "28P01" and err.message == 'password authentication failed for user "alice"'
    assert auth.stats.auth_failure == 1


def test_changed_md5_password_is_picked_up_in_the_same_login() -> None:
    auth, lookup, clock = make_auth({"alice": MD5_ALICE}, min_interval=1.0)
    run(auth.lookup("alice"))  # cached: the old verifier
    new = md5_verifier("rotated", "alice")
    lookup.passwords["alice"] = new
    clock.now += 5
    stored, _ = run(auth.login("alice", decide("alice"), md5_client(new)))
    assert stored == new
    assert auth.stats.cache_refetches == 1 and auth.stats.auth_success == 1
    assert run(auth.lookup("alice")).password == new  # the cache has the new verifier


def test_refetch_after_failure_is_rate_limited() -> None:
    auth, lookup, clock = make_auth({"alice": MD5_ALICE}, min_interval=10.0)
    run(auth.lookup("alice"))
    wrong = md5_verifier("nope", "alice")
    for _ in range(3):
        with pytest.raises(LoginFailed):
            run(auth.login("alice", decide("alice"), md5_client(wrong)))
    assert auth.stats.cache_refetches == 1
    assert auth.stats.cache_rate_limited == 2
    assert lookup.calls == ["alice", "alice"]
    clock.now += 11
    with pytest.raises(LoginFailed):
        run(auth.login("alice", decide("alice"), md5_client(wrong)))
    assert auth.stats.cache_refetches == 2


def test_a_fresh_lookup_is_not_refetched_after_failure() -> None:
    auth, lookup, _ = make_auth({"alice": MD5_ALICE})
    with pytest.raises(LoginFailed):
        run(auth.login("alice", decide("alice"), md5_client(md5_verifier("nope", "alice"))))
    assert lookup.calls == ["alice"]


# ------------------------------------------------------------------------------------- config


def write(tmp_path: Path, auth_query: dict[str, Any], users: list[dict[str, Any]] | None = None) -> Path:
    document = {
        "general": {"admin_username": "admin", "admin_password": "secret"},
        "pools": {"appdb": {"users": users or [], "auth_query": auth_query}},
    }
    path = tmp_path / "pg_doorman.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_config_auth_query_is_parsed_and_active(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, {"query": "SELECT passwd FROM auth.lookup($1)", "user": "a", "cache_ttl": "5m",
                         "cache_failure_ttl": 2000, "min_interval": "0s", "workers": 3, "pool_size": 7})
    )  # fmt: skip
    aq = config.pools["appdb"].auth_query
    assert aq is not None
    assert (aq.cache_ttl, aq.cache_failure_ttl, aq.min_interval, aq.workers, aq.pool_size) == (300.0, 2.0, 0, 3, 7)
    assert aq.server_user is None and aq.database is None
    assert not any("auth_query" in note for note in config.not_active)
    [(parsed, tmpl)] = config.auth_query_templates()
    assert parsed is aq and tmpl.pool_size == 7 and tmpl.database == "appdb"


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"query": "SELECT passwd FROM pg_shadow WHERE usename = 'x'", "user": "a"}, "must use $1"),
        ({"query": "SELECT $1", "user": "a", "server_password": "x"}, "requires server_user"),
        ({"query": "SELECT $1", "user": "a", "pool_size": 2, "min_pool_size": 3}, "must not exceed"),
        ({"query": "SELECT $1"}, "user"),
        ({"query": "SELECT $1", "user": "a", "workers": 0}, "workers"),
        ({"query": "SELECT $1", "user": "a", "server_user": "app"}, "also a user of this pool"),
        ({"query": "SELECT $1", "user": "a", "cache_tll": "1s"}, "cache_tll"),
    ],
)
def test_config_auth_query_errors(tmp_path: Path, section: dict[str, Any], needle: str) -> None:
    users = [{"username": "app", "password": MD5_ALICE, "pool_size": 1}]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, section, users))
    assert needle in str(err.value)


# ------------------------------------------------------------------------------------- registry


def registry_with(tmp_path: Path, auth_query: dict[str, Any], users: list[dict[str, Any]] | None = None,
                  **pool: Any) -> tuple[PoolRegistry, Config]:  # fmt: skip
    config = load_config(write(tmp_path, {"query": "SELECT passwd FROM x($1)", "user": "a", **auth_query}, users))
    registry = PoolRegistry()
    registry.reload(config.all_pool_settings(), config.auth_query_templates())
    return registry, config


def test_passthrough_pool_built_at_login_reused_and_rebuilt_on_new_verifier(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {})
    assert registry.auth_query_for("appdb", "alice") is not None
    pool = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    assert pool.settings.auth_query and pool.settings.server_username == "alice"
    assert pool.credentials().md5_verifier == MD5_ALICE
    assert registry.auth_query_pool("appdb", "alice", MD5_ALICE) is pool
    new = registry.auth_query_pool("appdb", "alice", md5_verifier("rotated", "alice"))
    assert new is not pool and pool.retired
    assert registry.successor(pool) is new
    auth = registry.auth_queries["appdb"]
    assert auth.stats.dynamic_pools_created == 2


def test_static_users_win(tmp_path: Path) -> None:
    users = [{"username": "app", "password": MD5_ALICE, "pool_size": 1}]
    registry, _ = registry_with(tmp_path, {}, users)
    assert registry.auth_query_for("appdb", "app") is None
    assert registry.auth_query_for("appdb", "other") is not None
    assert registry.auth_query_for("otherdb", "other") is None


def test_dedicated_mode_shares_one_server_user_pool(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {"server_user": "shared", "server_password": "pw"})
    first = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    second = registry.auth_query_pool("appdb", "bob", SCRAM_BOB)
    assert first is second
    assert first.settings.server_username == "shared" and first.credentials().password == "pw"
    # A client naming the server_user still goes through auth_query: the shared pool is no configured user's.
    assert registry.auth_query_for("appdb", "shared") is not None


def test_idle_passthrough_pools_are_collected_after_the_grace(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {})
    pool = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    pool.client_count = 1
    assert registry.collect_idle_auth_query_pools(100.0) == 0
    pool.client_count = 0
    assert registry.collect_idle_auth_query_pools(100.0) == 0  # first seen empty
    assert registry.collect_idle_auth_query_pools(100.0 + DYNAMIC_POOL_GRACE) == 1
    assert ("appdb", "alice") not in registry.pools and pool.retired
    assert registry.auth_queries["appdb"].stats.dynamic_pools_destroyed == 1


def test_pools_with_min_pool_size_are_never_collected(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {"min_pool_size": 1})
    pool = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    pool.opening = 0
    for now in (1.0, 100.0, 1000.0):
        registry.collect_idle_auth_query_pools(now)
    assert registry.pools[("appdb", "alice")] is pool


def test_reload_keeps_unchanged_auth_query_and_its_pools(tmp_path: Path) -> None:
    registry, config = registry_with(tmp_path, {})
    auth = registry.auth_queries["appdb"]
    pool = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    registry.reload(config.all_pool_settings(), config.auth_query_templates())
    assert registry.auth_queries["appdb"] is auth
    assert registry.pools[("appdb", "alice")] is pool and not pool.retired


def test_reload_that_changes_or_removes_auth_query_drops_its_pools(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {})
    auth = registry.auth_queries["appdb"]
    pool = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    changed = load_config(write(tmp_path, {"query": "SELECT passwd FROM y($1)", "user": "a"}))
    changes = registry.reload(changed.all_pool_settings(), changed.auth_query_templates())
    assert ("appdb", "alice") in changes.removed and pool.retired
    assert registry.auth_queries["appdb"] is not auth
    registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    document = yaml.safe_load((tmp_path / "pg_doorman.yaml").read_text())
    del document["pools"]["appdb"]["auth_query"]
    document["pools"]["appdb"]["users"] = [{"username": "app", "password": MD5_ALICE, "pool_size": 1}]
    (tmp_path / "pg_doorman.yaml").write_text(yaml.safe_dump(document))
    without = load_config(tmp_path / "pg_doorman.yaml")
    registry.reload(without.all_pool_settings(), without.auth_query_templates())
    assert registry.auth_queries == {} and ("appdb", "alice") not in registry.pools


def test_a_new_static_user_shadows_an_auth_query_pool(tmp_path: Path) -> None:
    registry, _ = registry_with(tmp_path, {})
    dynamic = registry.auth_query_pool("appdb", "alice", MD5_ALICE)
    config = load_config(
        write(tmp_path, {"query": "SELECT passwd FROM x($1)", "user": "a"},
              [{"username": "alice", "password": SCRAM_BOB, "pool_size": 1}])
    )  # fmt: skip
    registry.reload(config.all_pool_settings(), config.auth_query_templates())
    static = registry.pools[("appdb", "alice")]
    assert static is not dynamic and dynamic.retired and not static.settings.auth_query
    assert registry.auth_query_for("appdb", "alice") is None
    assert registry.successor(dynamic) is None  # its clients never move to the configured user's pool
