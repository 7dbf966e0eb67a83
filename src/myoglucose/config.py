"""Workflow configuration: validated against the JSON schema shipped with the package.

The same schema file (``src/myoglucose/schemas/config.schema.yaml``) is used by the Snakefile before any rule runs
and by every CLI command that takes ``--config``, so an unknown key, a wrong type or an impossible sampler setting is
refused with one message naming the file and the key.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=1)
def config_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_config(cfg: dict, source: str = "config") -> None:
    import jsonschema

    from .cli import ConfigError

    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        raise ConfigError(f"{source}: {where}: {e.message}")
    s = cfg.get("sampler") or {}
    if "warmup" in s and "samples" in s and int(s["warmup"]) < 1:
        raise ConfigError(f"{source}: sampler.warmup: must be >= 1")
