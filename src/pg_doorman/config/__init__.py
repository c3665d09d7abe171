"""pg_doorman configuration: YAML/TOML files in, immutable validated objects out.

``load_config(path)`` returns a :class:`Config` or raises one :class:`ConfigError` listing every problem
(file, key path, what was expected). ``Config.pool_settings(db, user)`` resolves user → pool → general
inheritance for one pool. Reload is "load again and swap": objects are never mutated.
"""

from pg_doorman.config.errors import ConfigError
from pg_doorman.config.example import generate_example_config
from pg_doorman.config.loader import PARSE_ERROR, CheckReport, check_config, load_config, startup_messages
from pg_doorman.config.schema import (
    Config,
    General,
    HbaSource,
    PasswordKind,
    PoolConfig,
    PoolSettings,
    UserConfig,
    classify_password,
)
from pg_doorman.config.units import format_duration, format_size, parse_duration, parse_file_mode, parse_size

__all__ = [
    "PARSE_ERROR",
    "CheckReport",
    "Config",
    "ConfigError",
    "General",
    "HbaSource",
    "PasswordKind",
    "PoolConfig",
    "PoolSettings",
    "UserConfig",
    "check_config",
    "classify_password",
    "format_duration",
    "format_size",
    "generate_example_config",
    "load_config",
    "parse_duration",
    "parse_file_mode",
    "parse_size",
    "startup_messages",
]
