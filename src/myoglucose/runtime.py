"""Process-level JAX set-up, done once, first thing in the CLI (never at import time of the library).

- ``EQX_ON_ERROR=nan``: failures inside implicit solver stages become NaN (a rejected proposal), not an exception.
- float64 everywhere (``jax_enable_x64``).
- CPU by default; GPU when requested or present (``device: auto | cpu | gpu``).
- the JAX persistent compilation cache, per user, shared safely between concurrent Snakemake jobs (JAX writes cache
  entries atomically; each entry is keyed by the program and the backend).
- ``host_device_count``: XLA CPU devices (must be set before JAX initialises its backends).
"""

from __future__ import annotations

import os
from pathlib import Path

_CONFIGURED: dict = {}


def default_cache_dir() -> Path:
    base = os.environ.get("MYOGLUCOSE_CACHE_DIR") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if base:
        return Path(base).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "myoglucose" / "jax"


def configure(device: str = "auto", cache_dir: str | Path | None = None, host_device_count: int = 1) -> dict:
    """Configure JAX for this process. Returns a dict describing the runtime (for provenance)."""
    if _CONFIGURED:
        return _CONFIGURED
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    if host_device_count > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={host_device_count}".strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except OSError:
        cache = None
    backend = jax.default_backend()
    if device == "gpu" and backend != "gpu":
        raise RuntimeError("device: gpu requested but JAX found no GPU (install with `pip install .[cuda]`)")
    _CONFIGURED.update({"device": device, "backend": backend, "cache_dir": str(cache) if cache else "",
                        "devices": [str(d) for d in jax.devices()]})
    return _CONFIGURED
