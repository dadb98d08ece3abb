"""Herald's configuration: YAML + `${VAR}` + `HERALD_*` overrides, validated.

The README's "Configuration" describes the file; `config/herald.yaml` documents every key.

`load_config` is what `herald check`, startup and SIGHUP reload all call. It either
returns a `Config` or raises `ConfigError` with every problem it found, one
`path:line: message` line each (`HERALD_SMTP__PORT: message` for overrides). Messages
never carry the offending value, so a secret in the wrong place cannot leak.

`Config.location(...)` gives the `file:line` of any key, for checks made after
loading (missing templates, handlers that do not import). Relative paths in it (`templates_dir`,
`dedupe.path`) are relative to the working directory, as in `compose.yaml`.

The modules, in the order a file goes through them:

- `yaml_lines`: YAML read into plain data with the line of every key and list item,
  strings filled in by `interpolation` (`${VAR}`);
- `env_overrides`: the `HERALD_*` variables applied to that data;
- `sections`, `actions`, `model`: the pydantic models (`base` holds what they share);
- `pydantic_errors`: their validation errors in the operator's words, at their lines;
- `loading`: `load_config` and `parse_config`, which put it together;
- `partial`: the usable part of an invalid file, for `herald check` only.
"""

from __future__ import annotations

from service.config.actions import (
    Action,
    BaseAction,
    DenyAction,
    PythonAction,
    RedirectAction,
    SendEmailAction,
    SetMetadataAction,
)
from service.config.loading import (
    DEFAULT_CONFIG_PATH,
    load_config,
    parse_config,
    resolve_config_path,
)
from service.config.model import Config, flow_problems
from service.config.problems import ConfigError
from service.config.sections import (
    DedupeConfig,
    HttpConfig,
    KafkaConfig,
    LogConfig,
    RateLimitConfig,
    RetryConfig,
    SmtpConfig,
    is_loopback,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Action",
    "BaseAction",
    "Config",
    "ConfigError",
    "DedupeConfig",
    "DenyAction",
    "HttpConfig",
    "KafkaConfig",
    "LogConfig",
    "PythonAction",
    "RateLimitConfig",
    "RedirectAction",
    "RetryConfig",
    "SendEmailAction",
    "SetMetadataAction",
    "SmtpConfig",
    "flow_problems",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_config_path",
]
