"""Sampler checkpoints: the NUTS state and the draws so far, saved atomically so that a killed fit can resume.

Layout (``<out>.ckpt/`` next to the posterior file, removed once the posterior is written)::

    manifest.json      fingerprint of everything that determines the chains (settings, data, model, code, versions)
    init.npz           the MAP initial point (sampler.init map) or the per-chain starts (dispersed), so a resumed
                       fit skips the optimisation
    chain<c>.npz       one file per chain (``chains<a>-<b>.npz`` for chains vectorised in one program): the full
                       sampler state after iteration ``iteration`` (warmup included), the post-warmup draws and
                       sampler statistics collected so far, and the fingerprint

A checkpoint is only used when its fingerprint equals the fit's own; anything else (another seed, other data, a
changed model or package version, a truncated file) is ignored with a log line and the chain starts afresh, so a
resumed fit gives the same draws as an uninterrupted one, bit for bit, on the same machine and software.
Files are written with :func:`myoglucose.io.atomic_write` (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io import atomic_write

MANIFEST = "manifest.json"
INIT = "init.npz"
FORMAT = 1


def checkpoint_dir_for(out: Path) -> Path:
    """``results/fits/m/d/posterior.nc`` -> ``results/fits/m/d/posterior.nc.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def chain_file(directory: Path, chain_ids: list[int]) -> Path:
    ids = list(chain_ids)
    name = f"chain{ids[0]}" if len(ids) == 1 else f"chains{ids[0]}-{ids[-1]}"
    return Path(directory) / f"{name}.npz"


def code_sha256() -> str:
    """sha256 over the Python sources that determine a chain (model, inference, runtime): a changed model or
    sampler must not resume old chains. Data code is covered by the hashes of the tidy tables."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    files = [*pkg.glob("model/**/*.py"), *pkg.glob("inference/**/*.py"), pkg / "runtime.py"]
    for p in sorted(files):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write, fsync=True)


def _loadz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - truncated or foreign file (BadZipFile, OSError, ...): not a checkpoint
        return {"__error__": np.asarray(f"{type(e).__name__}: {e}")}


# ------------------------------------------------------------------------------------------------ the fit folder
def prepare_dir(directory: Path, fp: str, resume: bool, log: Callable[[str], None] = print) -> None:
    """Make ``directory`` hold checkpoints of this fit only: kept when resuming with the same fingerprint,
    otherwise emptied. Writes the manifest."""
    directory = Path(directory)
    old = None
    if (directory / MANIFEST).exists():
        try:
            old = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            old = None
    keep = resume and old is not None and old.get("fingerprint") == fp and old.get("format") == FORMAT
    if directory.exists() and not keep:
        stale = [p for p in directory.iterdir() if p.is_file()]
        if stale:
            why = "--no-resume" if not resume else "they belong to a different fit (settings, data, model or code)"
            log(f"discarding {len(stale)} checkpoint file(s) in {directory}: {why}")
        for p in stale:
            p.unlink(missing_ok=True)
    elif keep:
        log(f"resuming from checkpoints in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / MANIFEST,
                 lambda tmp: tmp.write_text(json.dumps({"format": FORMAT, "fingerprint": fp}, indent=1)), fsync=True)


def save_init(directory: Path, init: dict[str, np.ndarray] | list[dict[str, np.ndarray]], fp: str) -> None:
    """The initial point: one dict (``init: map``) or a list of per-chain dicts (``init: dispersed``)."""
    per_chain = isinstance(init, list)
    starts = init if per_chain else [init]
    arrays = {f"v{c}.{k}": np.asarray(v) for c, s in enumerate(starts) for k, v in s.items()}
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, "fingerprint": fp, "chains": len(starts),
                                            "per_chain": per_chain}))
    _savez(Path(directory) / INIT, arrays)


def load_init(directory: Path, fp: str) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None:
    path = Path(directory) / INIT
    if not path.exists():
        return None
    z = _loadz(path)
    if "__error__" in z or "meta" not in z:
        return None
    meta = json.loads(str(z["meta"]))
    if meta.get("fingerprint") != fp or "chains" not in meta:
        return None
    starts = [{k.split(".", 1)[1]: v for k, v in z.items() if k.startswith(f"v{c}.")} for c in range(meta["chains"])]
    return starts if meta["per_chain"] else starts[0]


# ---------------------------------------------------------------------------------------------------- one chain
def save_state(path: Path, state: Any, iteration: int, draws: dict[str, np.ndarray], stats: dict[str, np.ndarray],
               fp: str) -> None:
    """Save the sampler state (any pytree of arrays) after ``iteration`` iterations, with the draws so far."""
    import jax

    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"x.{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays.update({f"d.{k}": np.asarray(v) for k, v in draws.items()})
    arrays.update({f"s.{k}": np.asarray(v) for k, v in stats.items()})
    arrays["meta"] = np.asarray(json.dumps({"format": FORMAT, "fingerprint": fp, "iteration": int(iteration),
                                            "leaves": len(leaves)}))
    _savez(Path(path), arrays)


def load_state(path: Path, template: Any, fp: str, log: Callable[[str], None] = print):
    """``(state, iteration, draws, stats)`` from a checkpoint that matches ``fp`` and the structure of
    ``template`` (the freshly initialised sampler state), or None."""
    import jax
    import jax.numpy as jnp

    path = Path(path)
    if not path.exists():
        return None
    z = _loadz(path)
    if "__error__" in z or "meta" not in z:
        log(f"ignoring unreadable checkpoint {path}: {z.get('__error__', 'no metadata')}")
        return None
    meta = json.loads(str(z["meta"]))
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fp:
        log(f"ignoring checkpoint {path}: it belongs to a different fit")
        return None
    t_leaves, treedef = jax.tree_util.tree_flatten(template)
    leaves = [z.get(f"x.{i:04d}") for i in range(int(meta.get("leaves", -1)))]
    if len(leaves) != len(t_leaves) or any(
            x is None or x.shape != np.shape(t) or x.dtype != np.dtype(t.dtype) for x, t in zip(leaves, t_leaves)):
        log(f"ignoring checkpoint {path}: its sampler state does not match this model")
        return None
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
    draws = {k[2:]: v for k, v in z.items() if k.startswith("d.")}
    stats = {k[2:]: v for k, v in z.items() if k.startswith("s.")}
    return state, int(meta["iteration"]), draws, stats
