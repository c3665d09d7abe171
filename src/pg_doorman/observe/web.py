"""The ``web`` listener: routes, roles and static files on top of `pg_doorman.observe.http`.

- ``/metrics`` (any role, always served when the listener is on): Prometheus text or OpenMetrics, gzip if asked.
- With ``web.ui`` (and an admin password that is not empty or 'admin'): the page ``/`` and ``/assets/*`` from the
  package's ``static/`` folder, the JSON API under ``/api/``, admin actions as ``POST /api/admin/<action>``.
- Roles and route levels: `pg_doorman.observe.auth`. ``ui``/``ui_anonymous`` are read per request, so a reload
  changes them; host and port need a restart.

Handlers are synchronous and quick (snapshots of pools); nothing here waits, so the pooler's loop never stalls.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pg_doorman.observe import api, auth
from pg_doorman.observe.http import HttpServer, Request, Response
from pg_doorman.observe.logtap import LogRing
from pg_doorman.observe.metrics import DoormanCollector, WebCounters, render

if TYPE_CHECKING:
    from pg_doorman.app import Application

log = logging.getLogger("pg_doorman.web")

STATIC_ROOT = Path(__file__).parent / "static"
SLOW_SCRAPE_SECONDS = 0.1
JSON_TYPE = "application/json; charset=utf-8"


def _json(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return Response(status=status, body=body, content_type=JSON_TYPE, headers=headers or [])


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def static_file(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root``, or None: no '..', no hidden names, no way out by symlink."""
    if not relative or "\0" in relative or "\\" in relative:
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    try:
        base = root.resolve(strict=True)
        candidate = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


class WebRouter:
    """Request → Response for one process (no sockets: unit-testable with plain `Request` values)."""

    def __init__(self, app: Application, static_root: Path = STATIC_ROOT) -> None:
        self.app = app
        self.static_root = static_root
        self.counters = WebCounters()
        self.collector = DoormanCollector(app, self.counters)
        self.log_ring: LogRing | None = None

    def handle(self, request: Request) -> Response:
        identity = auth.identify(
            request.header("authorization"),
            self.app.config.general.admin_username,
            self.app.config.general.admin_password,
        )
        response = self._route(request, identity)
        self.counters.count_request(response.status, identity.role)
        return response

    # ------------------------------------------------------------------ routing

    def _route(self, request: Request, identity: auth.Identity) -> Response:
        path = request.path
        method = "GET" if request.method == "HEAD" else request.method
        if path == "/metrics":
            return self._only(method, ("GET",)) or self._metrics(request)
        web = self.app.config.web
        if not web.ui_enabled(self.app.config.general.admin_password):
            return Response.text(404, "not found (the web console is off: web.ui)")
        if path == "/" or path == "/index.html":
            return self._only(method, ("GET",)) or self._static("index.html")
        if path.startswith("/assets/"):
            return self._only(method, ("GET",)) or self._static("assets/" + path[len("/assets/") :])
        if not path.startswith("/api/"):
            return Response.text(404, "not found")
        if path == "/api/auth/config":
            self.counters.count_auth(identity.role, identity.source)
            return self._only(method, ("GET",)) or _json(
                200, {"sso_enabled": False, "role": identity.role, "ui_anonymous": web.ui_anonymous}
            )
        level, call = self._api_route(path, method, request)
        if call is None:
            return _error(404, f"no such route: {path}")
        self.counters.count_auth(identity.role, identity.source)
        if identity.role == "rejected" or not auth.allowed(level, identity.role, web.ui_anonymous):
            if identity.role == "admin":  # pragma: no cover - admin may do everything
                return _error(403, "forbidden")
            headers = auth.challenge_headers(request.header("accept"), request.headers.get("x-requested-with"))
            message = "wrong credentials" if identity.role == "rejected" else "authentication required"
            return _error(401, message, headers)
        if level == "admin":
            if method != "POST":
                return _error(405, "use POST", [("Allow", "POST")])
            if not self._same_origin(request):
                return _error(403, "cross-origin request refused")
        elif method != "GET":
            return _error(405, "use GET", [("Allow", "GET, HEAD")])
        try:
            return _json(200, call())
        except api.ApiError as exc:
            return _error(exc.status, exc.message)

    def _api_route(self, path: str, method: str, request: Request) -> tuple[auth.Level, Any]:
        app, query = self.app, request.query
        if path in api.READ_ROUTES:
            route = api.READ_ROUTES[path]
            return "read", lambda: route(app)
        if path in api.QUERY_ROUTES:
            query_route = api.QUERY_ROUTES[path]
            return "read", lambda: query_route(app, query)
        if path == "/api/logs":
            return "personal", lambda: api.logs(self.log_ring, query)
        action = path.removeprefix("/api/admin/")
        if action != path and action in api.ADMIN_ACTIONS:
            who = f"admin from {request.peer}"
            return "admin", lambda: api.admin_action(app, action, query, who)
        return "read", None

    @staticmethod
    def _only(method: str, allowed: tuple[str, ...]) -> Response | None:
        if method in allowed:
            return None
        return Response.text(405, "method not allowed", [("Allow", ", ".join((*allowed, "HEAD")))])

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """A browser's cross-site POST carries an Origin of another host: refuse it (CSRF); curl sends none."""
        origin = request.header("origin")
        if not origin:
            return True
        host = origin.partition("://")[2].rstrip("/")
        return host == request.header("host")

    # ------------------------------------------------------------------ bodies

    def _metrics(self, request: Request) -> Response:
        started = time.perf_counter()
        body, content_type = render(self.collector, request.header("accept"))
        elapsed = time.perf_counter() - started
        self.counters.scrapes += 1
        self.counters.scrape_seconds += elapsed
        if elapsed > SLOW_SCRAPE_SECONDS:
            log.warning("slow /metrics: %.1f ms to build %d bytes", elapsed * 1000, len(body))
        return Response(status=200, body=body, content_type=content_type)

    def _static(self, relative: str) -> Response:
        found = static_file(self.static_root, relative)
        if found is None:
            return Response.text(404, "not found")
        content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "image/svg+xml"):
            content_type += "; charset=utf-8"
        return Response(status=200, body=found.read_bytes(), content_type=content_type)


class WebListener:
    """The router on a socket: started by `Application.start` when ``web.enabled``, stopped at shutdown."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.router = WebRouter(app)
        self.server = HttpServer(self.router.handle, on_error=self._refused)

    def _refused(self, status: int) -> None:
        self.router.counters.count_request(status, "anonymous")

    async def start(self) -> None:
        web = self.app.config.web
        if web.log_tap_max_entries > 0:
            self.router.log_ring = LogRing(web.log_tap_max_entries)
            logging.getLogger().addHandler(self.router.log_ring)
        await self.server.start(web.host, web.port)
        addresses = ", ".join(f"{host}:{port}" for host, port in self.server.addresses)
        console = "on" if web.ui_enabled(self.app.config.general.admin_password) else "off"
        log.info("web listener on %s: /metrics; web console and /api %s", addresses, console)

    async def stop(self) -> None:
        if self.router.log_ring is not None:
            logging.getLogger().removeHandler(self.router.log_ring)
        await self.server.stop()
