"""The ``web`` section (alias ``prometheus``): the HTTP listener for ``/metrics``, the web console and its JSON API.

Every key of the original is accepted. The SSO keys (a JWT from an authenticating proxy) are read and checked
for type, but SSO itself is not active yet: a warning says so, and without it nobody gains a role. Access is
only ever narrower than the original's, never wider: the console and API need the admin credentials unless
``ui_anonymous`` opens the read routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_doorman.config.reader import Section

WEB_SECTION_NAMES = ("web", "prometheus")
DEFAULT_WEB_PORT = 9127
DEFAULT_LOG_TAP_ENTRIES = 8192
# Admin passwords with which the original refuses to open the console: empty, or the well-known default.
WEAK_ADMIN_PASSWORDS = ("", "admin")


@dataclass(frozen=True, slots=True)
class WebConfig:
    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = DEFAULT_WEB_PORT
    ui: bool = False  # the web console and /api/* (besides /metrics)
    ui_anonymous: bool = False  # read routes without credentials
    log_tap_max_entries: int = DEFAULT_LOG_TAP_ENTRIES  # lines kept for /api/logs; 0 keeps none
    sso_enabled: bool = False  # accepted, not active yet (see the module docstring)
    sso_proxy_url: str | None = None
    sso_public_key_file: str | None = None
    sso_audience: tuple[str, ...] = ()
    sso_allowed_users: tuple[str, ...] = ("*",)
    sso_groups_claim: str = "groups"
    sso_admin_groups: tuple[str, ...] = ()
    sso_require_https: bool = False
    trusted_proxies: tuple[str, ...] = ()
    section: str = "web"  # the name the file used ("web" or "prometheus"), for messages

    def ui_enabled(self, admin_password: str) -> bool:
        """Whether the console and API are served: asked for, and the admin password is not empty or 'admin'."""
        return self.enabled and self.ui and admin_password not in WEAK_ADMIN_PASSWORDS


def read_web(root: Section, admin_password: str) -> WebConfig:
    """Read ``web`` or ``prometheus`` (both at once is an error: which one would win is a guess)."""
    present = [name for name in WEB_SECTION_NAMES if root.has(name)]
    if len(present) > 1:
        root.error("prometheus", "'prometheus' is another name for 'web'; keep one of the two sections")
    if not present:
        return WebConfig()
    name = present[0]
    s = root.table(name)
    if s is None:
        return WebConfig(section=name)
    web = WebConfig(
        enabled=s.boolean("enabled", False),
        host=s.string("host", "0.0.0.0", allow_empty=False),
        port=s.integer("port", DEFAULT_WEB_PORT, minimum=1, maximum=65535),
        ui=s.boolean("ui", False),
        ui_anonymous=s.boolean("ui_anonymous", False),
        log_tap_max_entries=s.integer("log_tap_max_entries", DEFAULT_LOG_TAP_ENTRIES),
        sso_enabled=s.boolean("sso_enabled", False),
        sso_proxy_url=s.optional_string("sso_proxy_url"),
        sso_public_key_file=s.optional_string("sso_public_key_file"),
        sso_audience=s.string_list("sso_audience"),
        sso_allowed_users=s.string_list("sso_allowed_users") if s.has("sso_allowed_users") else ("*",),
        sso_groups_claim=s.string("sso_groups_claim", "groups", allow_empty=False),
        sso_admin_groups=s.string_list("sso_admin_groups"),
        sso_require_https=s.boolean("sso_require_https", False),
        trusted_proxies=s.string_list("trusted_proxies"),
        section=name,
    )
    s.finish()
    if web.sso_enabled:
        s.problems.warn(
            s.key_path("sso_enabled"),
            "SSO is not active yet in this version: SSO tokens grant nothing; "
            "the web console needs the admin credentials (or ui_anonymous for read access)",
        )
    if web.ui and web.enabled and admin_password in WEAK_ADMIN_PASSWORDS:
        s.problems.warn(
            s.key_path("ui"),
            "the web console stays off while general.admin_password is empty or 'admin' (only /metrics is served)",
        )
    return web
