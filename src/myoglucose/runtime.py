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
- small while loops compiled into one kernel each (``XLA_FLAGS``: ``xla_cpu_small_while_loop_byte_threshold``,
  :func:`with_small_loop_threshold`): an ODE solve is a loop of a few dozen tiny operations per step, and XLA:CPU's
  thunk runtime dispatches each of them separately (docs/performance.md section 1b).
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


#: XLA:CPU's option (``--xla_backend_extra_options``) below which a while loop, or a run of small operations, is
#: compiled into one kernel instead of being executed as one dispatched "thunk" per operation; its own default is about
#: 1 kB. Every solver step of an ODE solve is a loop iteration of a few dozen operations on a few hundred bytes
#: (the states of a few conditions), so with the default each step pays a few dozen dispatches, which cost more than
#: its arithmetic (jax-ml/jax#40150, #26145: the runtime of jax >= 0.4.32 "significantly degraded performance for many
#: kinds of small models"). Raised, the whole step runs as one kernel. Measured in benchmarks/bench_xla_flags.py
#: (docs/performance.md section 1b). ``MYOGLUCOSE_XLA_SMALL_LOOP_BYTES`` overrides it (``0`` or ``off``: XLA's
#: default); a threshold the user already put in ``XLA_FLAGS`` wins.
SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"
SMALL_LOOP_BYTES = 1_000_000_000


def with_small_loop_threshold(flags: str, threshold: str | int | None) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with ``SMALL_LOOP_OPTION=threshold`` among its
    ``--xla_backend_extra_options`` (a comma-separated list of key=value; added when absent). Unchanged when the
    threshold is ``0``, ``off``, empty or None, or when ``flags`` already sets the option."""
    value = str(threshold if threshold is not None else "").strip().lower()
    if value in ("", "0", "off", "no", "false", "none") or SMALL_LOOP_OPTION in flags:
        return flags
    if not value.isdigit():
        raise ValueError(f"MYOGLUCOSE_XLA_SMALL_LOOP_BYTES must be a number of bytes or 'off' (got {threshold!r})")
    option = f"{SMALL_LOOP_OPTION}={int(value)}"
    parts = flags.split()
    for i, part in enumerate(parts):
        if part.startswith("--xla_backend_extra_options="):
            parts[i] = f"{part},{option}" if part.split("=", 1)[1] else f"{part}{option}"
            return " ".join(parts)
    return " ".join([*parts, f"--xla_backend_extra_options={option}"])


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
    os.environ["XLA_FLAGS"] = with_small_loop_threshold(
        os.environ.get("XLA_FLAGS", ""), os.environ.get("MYOGLUCOSE_XLA_SMALL_LOOP_BYTES", SMALL_LOOP_BYTES))
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
