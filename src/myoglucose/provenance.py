"""Provenance recorded in every result file: package versions, git commit, config, seed, data checksums."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import subprocess
from pathlib import Path

from . import __version__

PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "lineax", "numpyro", "arviz", "arviz-base", "arviz-stats",
            "xarray", "numpy", "scipy", "pandas", "snakemake")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: str | Path | None = None) -> str:
    repo = Path(repo or Path(__file__).resolve().parents[2])
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if commit != "unknown" and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"myoglucose": __version__}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out


def provenance_attrs(*, config_yaml: str, seed: int, data_files: list[Path], model_files: list[Path],
                     extra: dict | None = None) -> dict[str, str | int | float]:
    """Root attributes for a NetCDF result (strings and numbers only; dicts are JSON-encoded)."""
    versions = package_versions()
    attrs: dict[str, str | int | float] = {
        "myoglucose_version": __version__,
        "git_commit": git_commit(),
        "config_yaml": config_yaml,
        "seed": int(seed),
        "data_sha256": json.dumps({str(p): sha256_file(p) for p in data_files}, sort_keys=True),
        "model_sha256": json.dumps({str(p): sha256_file(p) for p in model_files}, sort_keys=True),
        "package_versions": json.dumps(versions, sort_keys=True),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for k, v in versions.items():
        attrs[f"{k.replace('-', '_')}_version"] = v
    for k, v in (extra or {}).items():
        attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True, default=str)
    return attrs
