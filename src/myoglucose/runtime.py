"""Process-level JAX set-up, done once, first thing in the CLI (never at import time of the library).

- ``EQX_ON_ERROR=nan``: failures inside implicit solver stages become NaN (a rejected proposal), not an exception.
- float64 everywhere (``jax_enable_x64``).
- CPU by default; GPU when requested or present (``device: auto | cpu | gpu``).
- the JAX persistent compilation cache, per user, shared between concurrent Snakemake jobs. Entries are keyed by
  the program, the backend and the compile options, so concurrent jobs that compile the same program write the
  same entry. jax 0.12 writes an entry in place (``LRUCache.put``: ``Path.write_bytes``), so a job killed
  mid-write leaves a truncated entry that is never rewritten (``put`` skips existing keys; each later run warns
  "Error reading persistent compilation cache entry" and recompiles), and a concurrent reader can see a partial
  file. :func:`atomic_compilation_cache_writes` makes ``put`` write a temporary file and rename it
  (docs/reliability.md).
- ``host_device_count``: XLA CPU devices (must be set before JAX initialises its backends).
- XLA's own C++ log lines are hidden (``TF_CPP_MIN_LOG_LEVEL=3`` unless set): they are compiler noise in the logs.
"""

from __future__ import annotations

import os
from pathlib import Path

_CONFIGURED: dict = {}


class DeviceError(ValueError):
    """The configured device is not available (a configuration error: the CLI prints it and exits 2)."""


def atomic_compilation_cache_writes() -> bool:
    """Make the JAX persistent cache write each entry to a unique temporary file and rename it into place.

    Only the unbounded local cache (``jax_compilation_cache_max_size`` -1, the default) is changed; a bounded cache
    (eviction, file lock) or a remote one keeps JAX's own ``put``. Returns whether the patch is in effect.
    Checked against jax 0.12 (``jax._src.lru_cache``); on another layout it does nothing.
    """
    try:
        from jax._src import lru_cache
    except ImportError:
        return False
    cls = getattr(lru_cache, "LRUCache", None)
    suffix = getattr(lru_cache, "_CACHE_SUFFIX", None)
    if cls is None or suffix is None or not hasattr(cls, "put"):
        return False
    if getattr(cls.put, "_myoglucose_atomic", False):
        return True
    original = cls.put

    def put(self, key: str, value: bytes) -> None:
        if getattr(self, "eviction_enabled", True) or not getattr(self, "_is_local", False):
            return original(self, key, value)
        if not key:
            raise ValueError("key cannot be empty")
        final = Path(str(self.path)) / f"{key}{suffix}"
        if final.exists():
            return
        write_bytes_atomic(final, value)

    put._myoglucose_atomic = True
    cls.put = put
    return True


def write_bytes_atomic(final: Path, value: bytes) -> None:
    """Write ``value`` to a unique temporary file beside ``final`` and rename it into place: a concurrent reader sees
    the old file or the whole new one, and a writer killed mid-write leaves no partial ``final``."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    # XLA's C++ log: compiling the fit's programs prints dozens of "Algebraic simplifier is likely stuck in a circular
    # simplification loop" lines at ERROR level (harmless: the pass stops at its iteration cap), which bury the fit's
    # own log. Hidden unless the user sets TF_CPP_MIN_LOG_LEVEL (0 shows everything); real failures still raise.
    # jaxlib reads it when it loads, so the CLI sets it at import; this covers library use that configures first.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
        # every program, however quick to compile: a fit makes many sub-second ones (4.4 s of XLA compile per warm
        # start of the core Katz clamp at a 0.5 s threshold, 1.1 s at 0; benchmarks/bench_startup.py, session 12)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except OSError:
        cache = None
    atomic = atomic_compilation_cache_writes() if cache else False
    backend = jax.default_backend()
    if device == "gpu" and backend != "gpu":
        raise DeviceError("device: gpu requested but JAX found no GPU (install with `pip install .[cuda]`, or set "
                          "device: cpu or auto)")
    _CONFIGURED.update({"device": device, "backend": backend, "cache_dir": str(cache) if cache else "",
                        "atomic_cache_writes": atomic, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                        "devices": [str(d) for d in jax.devices()]})
    return _CONFIGURED
