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
    _check_lengths(s, f"{source}: sampler")
    fits = cfg.get("fits") or []
    seen = set()
    for i, entry in enumerate(fits):
        key = (entry["dataset"], entry["model"])
        if key in seen:
            raise ConfigError(f"{source}: fits.{i}: ({key[0]}, {key[1]}) is listed twice")
        seen.add(key)
        check_sampler_override(entry.get("sampler"), f"{source}: fits.{i}.sampler")
        _check_lengths({**s, **(entry.get("sampler") or {})}, f"{source}: fits.{i}.sampler (over `sampler`)")


def _check_lengths(sampler: dict, where: str) -> None:
    """``max_samples`` (when set) is at least ``samples`` (schema default 500 when not set)."""
    from .cli import ConfigError

    top = sampler.get("max_samples")
    first = sampler.get("samples", config_schema()["properties"]["sampler"]["properties"]["samples"]["default"])
    if top is not None and int(top) < int(first):
        raise ConfigError(f"{where}: max_samples ({top}) must be >= samples ({first}), or null for a fixed length")


def check_sampler_override(override: dict | None, where: str) -> None:
    """A `fits` entry's `sampler`: only keys of the `sampler` section, each valid under that section's rules."""
    import jsonschema

    from .cli import ConfigError

    if not override:
        return
    section = config_schema()["properties"]["sampler"]
    unknown = sorted(set(override) - set(section["properties"]))
    if unknown:
        raise ConfigError(f"{where}: unknown sampler setting(s) {unknown}; allowed: {sorted(section['properties'])}")
    for key, value in override.items():
        errors = list(jsonschema.Draft202012Validator(section["properties"][key]).iter_errors(value))
        if errors:
            raise ConfigError(f"{where}.{key}: {errors[0].message}")


def sampler_for_fit(cfg: dict, dataset: str, model: str) -> dict:
    """The sampler settings of one fit: the `sampler` section, with the matching `fits` entry's `sampler` over it.

    ``dataset`` is the dataset (or joint dataset) id, ``model`` the model variant's folder name, as in the workflow's
    result paths ``results/fits/<model>/<dataset>/``."""
    merged = dict(cfg.get("sampler") or {})
    for entry in cfg.get("fits") or []:
        if entry.get("dataset") == dataset and entry.get("model") == model:
            merged.update(entry.get("sampler") or {})
    return merged
