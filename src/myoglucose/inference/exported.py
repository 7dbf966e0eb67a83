"""The fit's potential value-and-gradient, traced once and exported (``jax.export``), loaded by every process.

Tracing the potential -- the model, its ODE solves and their gradient -- costs 2-5 s per process on 2 cores
(reverse mode more), and the persistent compilation cache cannot save it: JAX traces a program before it can look
it up. A fit traced it once in the main process (MAP search, Laplace metric) and once more in every chain worker
(the NUTS step), and a rerun traced it all again. Here the main process exports the compiled value-and-gradient of the
flat latent vector to bytes (a serialised StableHLO module, about 0.2 MB), hands them to the chain workers, and keeps
them on disk beside the compilation cache, keyed by everything the program depends on (``export_key``). A process
that has the bytes loads them in about 0.4 s instead of tracing (docs/performance.md section 6), then compiles or
loads the machine code from the persistent cache as before. The exported program computes the same function from
the same jaxpr; the compiled step around it may round the last bits differently from the traced one.

NumPyro differentiates the potential it is given. ``potential_from_exported`` wraps the exported value-and-gradient in
a ``jax.custom_jvp`` whose tangent is the stored gradient's dot product with the input tangent: one exported call
per gradient in reverse mode (``value_and_grad`` linearises and transposes the dot product) and in forward mode
(``jacfwd`` batches the tangents; the primal call is unbatched).

Chains run one per process or one after another use it; vectorised chains (``vmap`` of the potential) keep the
traced one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

#: file name suffix of a stored export in ``<cache dir>/exports``
SUFFIX = ".potential.jaxexport"


def export_key(builder, arrays, backend: str) -> str:
    """sha256 of everything the exported value-and-gradient depends on: the package code that builds the model and the
    potential, the versions of the numerical stack, the model's parameter and observable tables, the solver settings
    (after ``auto`` was resolved), the fit's data arrays (so a subset of conditions or a changed protocol is a
    different program), the backend, x64 and ``EQX_ON_ERROR``."""
    import jax

    from ..provenance import package_versions, sha256_file
    from .checkpoint import code_sha256

    h = hashlib.sha256()
    h.update(json.dumps({
        "code": code_sha256(), "versions": package_versions(), "backend": backend,
        "x64": bool(jax.config.jax_enable_x64), "eqx_on_error": os.environ.get("EQX_ON_ERROR", ""),
        "solver": dataclasses.asdict(builder.solver),
        "model": [sha256_file(f) for f in builder.spec.sha_inputs()],
        "structure": [list(map(str, getattr(builder, k, []))) for k in ("groups", "subjects")]
        + [list(map(str, getattr(getattr(builder, "data", None), k, []))) for k in ("observables", "active")],
    }, sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(arrays):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def export_vg(vg: Callable, n: int) -> bytes:
    """Serialise the jitted value-and-gradient ``vg`` of a flat float64 vector of length ``n``."""
    import jax
    from jax import export

    exp = export.export(vg)(jax.ShapeDtypeStruct((n,), np.float64))
    return bytes(exp.serialize())


def load_vg(blob: bytes) -> Callable:
    """The jitted value-and-gradient of a flat vector from ``export_vg``'s bytes."""
    import jax
    from jax import export

    return jax.jit(export.deserialize(bytearray(blob)).call)


def cache_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "exports" / f"{key}{SUFFIX}"


def read_cached(cache_dir: str | Path | None, key: str) -> bytes | None:
    """The stored export of ``key`` (None when there is none or it cannot be read)."""
    if not cache_dir:
        return None
    try:
        return cache_file(cache_dir, key).read_bytes()
    except OSError:
        return None


def write_cached(cache_dir: str | Path | None, key: str, blob: bytes) -> None:
    """Store an export atomically (a temporary file renamed into place), so that concurrent Snakemake jobs never read a
    partial file. Best effort: a read-only or full cache folder only costs the next process a trace."""
    if not cache_dir:
        return
    from ..runtime import write_bytes_atomic

    final = cache_file(cache_dir, key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(final, blob)
    except OSError:
        pass


def potential_from_exported(vg: Callable) -> Callable:
    """A potential of NumPyro's unconstrained latent dict whose value and derivatives come from the exported
    value-and-gradient ``vg`` of the flat (sorted-site) vector, with one ``vg`` call per gradient."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    @jax.custom_jvp
    def flat_potential(x):
        return vg(x)[0]

    @flat_potential.defjvp
    def _jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        value, grad = vg(x)
        return value, jnp.dot(grad, t)

    def pe(z):
        return flat_potential(ravel_pytree(z)[0])

    return pe
