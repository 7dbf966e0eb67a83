"""Process entry points of simulation-based calibration (picklable, importable in a fresh ``spawn`` process)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable


def resolve_solver(job, log: Callable[[str], None]):
    """Measure the stiffness of the template's conditions once (``solver.name: auto``) and return the job with the
    chosen solver and gradient mode, so worker processes do not probe again."""
    from .fit import load_problem

    _, _, builder = load_problem(job)
    if builder.stiffness is not None:
        rep = builder.stiffness.as_dict()
        log(f"solver auto -> {builder.solver.name}: largest Jacobian spectral radius {rep['rho_max_per_min']:.3g}/min"
            f" over {rep['horizon_min']:.0f} min ({rep['reason']})")
    if builder.adjoint_choice:
        log(f"gradients auto -> {builder.solver.adjoint}: {builder.adjoint_choice}")
    return dataclasses.replace(job, solver={**job.solver, "name": builder.solver.name,
                                            "adjoint": builder.solver.adjoint})


def sbc_worker(args) -> list:
    """Run the SBC replications ``rep_ids`` of ``job`` (a ``FitJob`` whose tidy tables are the template design)."""
    os.environ.setdefault("EQX_ON_ERROR", "nan")  # before equinox is imported in this fresh process
    job, settings, rep_ids = args
    from .. import runtime

    runtime.configure(job.device, job.cache_dir)
    from .fit import _exit_with_parent, load_problem
    from .sbc import run_replications
    from .sample import _stderr

    import multiprocessing as mp

    if mp.parent_process() is not None:  # a worker process: end with the CLI process that started it
        _exit_with_parent()
    _, data, builder = load_problem(job)
    return run_replications(builder, data.arrays, settings, rep_ids, log=_stderr)
