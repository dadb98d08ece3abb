"""`load_config` and `parse_config`: file → YAML with lines → overrides → validated Config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from service.config.env_overrides import apply_env_overrides
from service.config.model import FLOWS_CHECKED, Config, flow_problems
from service.config.problems import ConfigError
from service.config.pydantic_errors import validation_problems
from service.config.yaml_lines import Origin, compose_document

__all__ = ["DEFAULT_CONFIG_PATH", "load_config", "parse_config", "resolve_config_path"]

DEFAULT_CONFIG_PATH = Path("config/herald.yaml")


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """`--config PATH`, else `HERALD_CONFIG`, else `config/herald.yaml` (README, "Command line")."""
    return Path(cli_value or environ.get("HERALD_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate, override and validate the config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    return parse_config(text, str(path), os.environ if environ is None else environ)


def parse_config(text: str, source: str, environ: Mapping[str, str] | None = None) -> Config:
    """Validate YAML `text`; `source` names it in messages (`source:line: ...`)."""
    env = os.environ if environ is None else environ
    doc = compose_document(text, source, env)
    env_problems = apply_env_overrides(doc, Config, env)
    found = [doc.problem(path, message) for path, message in doc.problems.items()]
    flows = doc.data.get("flows")
    if isinstance(flows, Mapping):
        found += [doc.problem(path, message) for path, message in flow_problems(flows)]
    try:
        config = Config.model_validate(doc.data, context={FLOWS_CHECKED: True})
    except ValidationError as exc:
        found += validation_problems(doc, exc, doc.problems.keys(), "action")
    found.sort(key=lambda p: (p.line is None, p.line or 0))
    if found or env_problems:
        raise ConfigError(str(p) for p in found + env_problems)
    config._origin = Origin(source, doc.lines)
    return config
