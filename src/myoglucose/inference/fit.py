"""Fit orchestration: tidy tables + model variant + settings -> posterior DataTree (no file writes here).

``FitJob`` is a small picklable description (paths and settings), so chains can run in separate processes: each
process rebuilds the same model from the same files, runs its chain with ``PRNGKey(seed)`` folded with the chain
index, and returns numpy arrays. The merged result equals a sequential run with the same seed.

With ``checkpoint_dir`` every chain saves its sampler state there (``checkpoint.py``) and ``resume=True`` continues
from matching checkpoints: the draws equal those of an uninterrupted fit with the same seed (same machine, same
software). The folder is left in place; the CLI removes it once the posterior file is written.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import time
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from .sample import SamplerSettings


@dataclasses.dataclass(frozen=True)
class FitJob:
    tidy_dir: str
    model_dir: str
    repo_root: str
    solver: dict
    sampler: dict
    device: str = "auto"
    cache_dir: str | None = None
    checkpoint_dir: str | None = None  # <out>.ckpt: sampler checkpoints (None: no checkpoints)
    resume: bool = False  # continue from matching checkpoints in checkpoint_dir (else start afresh)
    conditions: tuple[str, ...] | None = None  # keep only these condition ids of the tidy tables (None: all)
    convergence: dict | None = None  # thresholds that end a fit with sampler.max_samples (config `diagnostics`)


def load_problem(job: FitJob):
    """(spec, data, builder) for a job: validated tidy tables -> arrays -> NumPyro model."""
    from ..data import read_tables
    from ..model.simulate import SolverSettings
    from ..model.spec import load_model
    from .arrays import build_fit_data
    from .numpyro_model import ModelBuilder

    spec = load_model(job.model_dir)
    tables = read_tables(Path(job.tidy_dir), Path(job.repo_root))
    meas, conds = tables.measurements, tables.conditions
    if job.conditions is not None:
        unknown = sorted(set(job.conditions) - set(conds["condition_id"].astype(str)))
        if unknown:
            raise ValueError(f"{Path(job.tidy_dir) / 'conditions.tsv'}: no condition(s) {unknown}; it has "
                             f"{sorted(conds['condition_id'].astype(str))}")
        conds = conds[conds["condition_id"].astype(str).isin(job.conditions)].reset_index(drop=True)
        meas = meas[meas["condition_id"].astype(str).isin(job.conditions)].reset_index(drop=True)
    data = build_fit_data(meas, conds, Path(job.repo_root), set(spec.observables))
    builder = ModelBuilder(spec, data, SolverSettings.from_dict(job.solver), cache_dir=job.cache_dir)
    return spec, data, builder


def fit_fingerprint(job: FitJob, spec, data, builder, backend: str, vectorized: bool) -> str:
    """Hash of everything that determines the chains: a checkpoint is resumed only when this is unchanged.
    Excluded: ``chains`` (chain c does not depend on how many there are), ``samples`` and ``max_samples`` (a chain
    can be extended or cut), ``progress``, ``checkpoint_every`` and ``predictive_draws``. The solver is the one the
    model uses (after ``name: auto`` was resolved)."""
    from ..provenance import package_versions, sha256_file
    from .checkpoint import code_sha256, fingerprint

    sampler = dict(dataclasses.asdict(SamplerSettings.from_dict(job.sampler)))
    for k in ("chains", "samples", "max_samples", "progress", "checkpoint_every", "predictive_draws", "chain_method"):
        sampler.pop(k)
    root = Path(job.repo_root)
    files = [Path(job.tidy_dir) / n for n in ("measurements.tsv", "conditions.tsv")] + list(spec.sha_inputs())
    protocols = sorted(set(data.covariates["protocol_file"].astype(str)))
    files += [p if p.is_absolute() else root / p for p in map(Path, protocols)]
    return fingerprint({
        "sampler": sampler, "vectorized": vectorized, "backend": backend,
        "solver": dataclasses.asdict(builder.solver),
        "files": [sha256_file(f) for f in files if f.exists()],
        "code": code_sha256(), "versions": package_versions(),
    })


_WATCHING_PARENT = False


def _exit_with_parent(every_s: float = 1.0) -> None:
    """End this worker process when the fit process that started it is gone.

    A fit killed with SIGKILL cannot stop its chain workers. Without this they would sample on and write
    checkpoints beside a resumed fit, and then wait forever for work on the executor's queue (every worker holds a
    write end of that pipe, so its read never sees end-of-file). A daemon thread checks the parent PID."""
    import os
    import threading

    global _WATCHING_PARENT
    if _WATCHING_PARENT:
        return
    _WATCHING_PARENT = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_WORKER_CACHE: dict = {}  # in a chain worker process: problem and kernel of the fit it serves (``_chain_worker``)


def _chain_worker(args) -> dict:
    import os

    os.environ.setdefault("EQX_ON_ERROR", "nan")  # before equinox is imported in this fresh process
    _exit_with_parent()
    job, chain, init, fp, metric, blob = args
    from .. import runtime

    runtime.configure(job.device, job.cache_dir)
    from .sample import run_nuts

    # the next chain of the same fit in this worker (or the same chain's next round) reuses the problem, the kernel
    # and its compiled step: everything but the chain's start and length is the same
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([dataclasses.asdict(job) | {"sampler": {k: v for k, v in job.sampler.items()
                                                                          if k != "samples"}}, fp],
                                    sort_keys=True, default=str).encode()
                         + (b"" if metric is None else np.ascontiguousarray(metric).tobytes())
                         + (blob or b"")).hexdigest()
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()  # one fit at a time per worker
        problem = load_problem(job)
        if blob:  # the main process's exported potential: the chain's start and step do not trace the model
            from .exported import load_vg
            from .sample import use_exported

            use_exported(problem[2], problem[1].arrays, load_vg(blob))
        _WORKER_CACHE[key] = (problem, {})
    (_, data, builder), reuse = _WORKER_CACHE[key]
    settings = SamplerSettings.from_dict(job.sampler)
    t0 = time.perf_counter()
    out = run_nuts(builder, data.arrays, settings, init, [chain], checkpoint_dir=job.checkpoint_dir, fingerprint=fp,
                   reuse=reuse, **_metric_kw(metric))
    out["wall"] = time.perf_counter() - t0
    return out


def _exporting(method: str, builder) -> bool:
    """Whether this fit exports its potential (inference/exported.py): every chain method but vectorised chains (a
    batched potential), for a model builder (not a toy model), unless ``MYOGLUCOSE_EXPORT_POTENTIAL=0``."""
    import os

    off = os.environ.get("MYOGLUCOSE_EXPORT_POTENTIAL", "1").strip().lower() in ("0", "false", "no", "off")
    return not off and method != "vectorized" and hasattr(builder, "sample_latents")


def _export_potential(builder, data, info: dict, method: str, log: Callable[[str], None]) -> bytes | None:
    """The fit's potential as an exported value-and-gradient (inference/exported.py): loaded from the cache folder
    when an earlier run stored this very program, else traced, exported and stored. Every program of this process
    that evaluates the potential then calls it (``sample.use_exported``), and the chain workers get the same bytes, so
    a fit computes the same chains whether or not the export was cached. Returns the bytes (None: the traced path,
    when the program could not be exported)."""
    from .exported import export_key, export_vg, load_vg, read_cached, write_cached
    from .sample import latent_size, potential, use_exported

    t0 = time.perf_counter()
    key = export_key(builder, data.arrays, info["backend"])
    cache = info.get("cache_dir") or None
    blob = read_cached(cache, key)
    vg = None
    if blob is not None:
        try:
            vg = load_vg(blob)
            log(f"potential: loaded the exported value-and-gradient from the cache ({len(blob) / 1e6:.2f} MB, "
                f"{time.perf_counter() - t0:.1f} s)")
        except Exception as exc:  # a damaged entry costs a trace, not the fit
            log(f"potential: could not load the cached export ({type(exc).__name__}: {exc}); tracing instead")
            blob = None
    if blob is None:
        try:
            blob = export_vg(potential(builder, data.arrays)[0], latent_size(builder, data.arrays))
            vg = load_vg(blob)
        except Exception as exc:  # e.g. an operation jax.export cannot serialise: the traced path, as before
            log(f"potential: could not export the value-and-gradient ({type(exc).__name__}: {exc}); every process "
                "traces it")
            return None
        write_cached(cache, key, blob)
        log(f"potential: traced and exported its value-and-gradient ({len(blob) / 1e6:.2f} MB, "
            f"{time.perf_counter() - t0:.1f} s)")
    use_exported(builder, data.arrays, vg)
    return blob


def _metric_kw(metric) -> dict:
    import jax.numpy as jnp

    return {} if metric is None else {"inverse_mass_matrix": jnp.asarray(metric, dtype=jnp.float64)}


def run_fit(job: FitJob, log: Callable[[str], None] = print) -> tuple[dict, dict, object]:
    """Run MAP initialisation and NUTS. Returns (samples, stats, builder); arrays are [chain, draw, ...].

    With ``sampler.max_samples`` above ``samples`` the chains run in rounds: after each, ``convergence_check``
    against ``job.convergence``; while it fails, every chain continues from its checkpoint (the same Markov chain,
    adaptation finished) to ``next_length`` draws, up to ``max_samples``. ``stats["_rounds"]`` lists the rounds."""
    from .. import runtime

    info = runtime.configure(job.device, job.cache_dir)
    settings = SamplerSettings.from_dict(job.sampler)
    spec, data, builder = load_problem(job)
    log(f"model {spec.id}: {len(builder.estimated)} estimated parameters "
        f"({len(builder.group_level())} group-level over {len(data.groups)} groups, "
        f"{len(builder.subject_level())} subject-level over {len(data.subjects)} subjects), "
        f"{len(data.measurements)} measurements in {len(data.conditions)} conditions, "
        f"{len(data.active)} active states; backend {info['backend']}")
    if builder.not_informed:
        log(f"every condition takes measured insulin as forcing, so {', '.join(builder.not_informed)} (insulin "
            "kinetics) stay at their nominal values")
    if builder.stiffness is not None:
        rep = builder.stiffness.as_dict()
        log(f"solver auto -> {builder.solver.name}: largest Jacobian spectral radius {rep['rho_max_per_min']:.3g}/min "
            f"over {rep['horizon_min']:.0f} min ({rep['reason']})")
    if builder.adjoint_choice:
        log(f"gradients auto -> {builder.solver.adjoint}: {builder.adjoint_choice}")
    # chain workers take the measured choices instead of probing again
    job = dataclasses.replace(job, solver={**job.solver, "name": builder.solver.name,
                                           "adjoint": builder.solver.adjoint})
    method = settings.resolved_chain_method(info["backend"])
    limit = settings.sample_limit
    scratch = None  # a fit that may be extended continues its chains from checkpoints: a temporary folder if none
    if limit > settings.samples and not job.checkpoint_dir:
        import tempfile

        scratch = tempfile.mkdtemp(prefix="myoglucose-chains-")
        job = dataclasses.replace(job, checkpoint_dir=scratch, resume=False)
    try:
        return _run_fit(job, settings, spec, data, builder, info, method, limit, log)
    finally:
        if scratch:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


def _run_fit(job: FitJob, settings: SamplerSettings, spec, data, builder, info: dict, method: str, limit: int,
             log: Callable[[str], None]) -> tuple[dict, dict, object]:
    import jax

    from .sample import find_chain_starts, find_map, flat_unconstrained, map_metric, potential, run_nuts

    fp, ck = "", job.checkpoint_dir
    if ck:
        from . import checkpoint

        fp = fit_fingerprint(job, spec, data, builder, info["backend"], method == "vectorized")
        checkpoint.prepare_dir(Path(ck), fp, job.resume, log=log)
    blob = _export_potential(builder, data, info, method, log) if _exporting(method, builder) else None
    init = None
    pot = None  # the potential's compiled value-and-gradient, shared by the MAP search and the Laplace metric
    t0 = time.perf_counter()
    start_potentials = None
    if settings.init in ("map", "dispersed"):
        init = checkpoint.load_init(Path(ck), fp) if ck else None
        if init is not None:
            log("initial point(s) restored from the checkpoint")
        else:
            pot = potential(builder, data.arrays)
            key = jax.random.PRNGKey(settings.seed + 7919)
            if settings.init == "map":
                init = find_map(builder, data.arrays, settings, key, log=log, pot=pot)
                init = {k: np.asarray(v) for k, v in init.items()}
            else:
                init, start_potentials = find_chain_starts(builder, data.arrays, settings, key, log=log, pot=pot)
            log(f"initialisation ({settings.init}) done in {time.perf_counter() - t0:.1f} s")
            if ck:
                checkpoint.save_init(Path(ck), init, fp)
    if isinstance(init, list) and start_potentials is None:  # restored dispersed starts: their potentials again
        pot = pot or potential(builder, data.arrays)
        start_potentials = [float(pot[0](flat_unconstrained(builder, data.arrays, s))[0]) for s in init]
    metric = None
    if settings.laplace_metric:  # recomputed on resume: deterministic, and 2 n gradients (seconds)
        # dispersed: at the chain start with the highest density
        at = init[int(np.argmin(start_potentials))] if isinstance(init, list) else init
        metric = map_metric(builder, data.arrays, at, settings, log=log, pot=pot)
    elif settings.metric_init == "laplace":
        log("metric_init laplace needs init: map or dispersed; with init: median the warmup starts from the identity "
            "metric")
    adaptive = limit > settings.samples
    log(f"sampling {settings.chains} chains x ({settings.warmup} warmup + {settings.samples} draws"
        + (f", extended until R-hat and ESS pass, at most {limit} draws)" if adaptive else ")")
        + f", chain method {method}")
    t0 = time.perf_counter()
    chains = list(range(settings.chains))
    pool = None
    reuse: dict = {}  # one kernel and compiled step for every chain and round run in this process
    n, rounds, spent = settings.samples, [], {}
    try:
        while True:
            rs = dataclasses.replace(settings, samples=n)  # round n: every chain to n draws (resumed after round 1)
            if method == "processes":
                if pool is None:
                    workers = min(settings.chains, max(1, (mp.cpu_count() or 1)))
                    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
                rjob = dataclasses.replace(job, sampler={**job.sampler, "samples": n})
                starts = init if isinstance(init, list) else [init] * len(chains)
                results = list(pool.map(_chain_worker, [(rjob, c, starts[c], fp, metric, blob) for c in chains]))
                samples = {k: np.concatenate([r["samples"][k] for r in results]) for k in results[0]["samples"]}
                stats = {k: np.concatenate([r["stats"][k] for r in results]) for k in results[0]["stats"]}
            else:
                out = run_nuts(builder, data.arrays, rs, init, chains, vectorized=(method == "vectorized"),
                               checkpoint_dir=ck, fingerprint=fp, reuse=reuse, **_metric_kw(metric))
                samples, stats = out["samples"], out["stats"]
            for k in ("_elapsed", "_warmup_gradients"):  # this round's work, added over rounds
                spent[k] = spent.get(k, 0) + stats[k]
            if not adaptive:
                break
            chk = convergence_check(builder, data, samples, job.convergence)
            rounds.append({"draws_per_chain": n, "passed": chk["passed"], "r_hat_max": chk["r_hat_max"],
                           "ess_bulk_min": chk["ess_bulk_min"], "ess_tail_min": chk["ess_tail_min"],
                           "wall_s": time.perf_counter() - t0})
            if chk["passed"] or n >= limit:
                log(f"{n} draws per chain: max R-hat {chk['r_hat_max']:.4f}, min bulk ESS {chk['ess_bulk_min']:.0f}, "
                    f"min tail ESS {chk['ess_tail_min']:.0f}: "
                    + ("converged" if chk["passed"] else f"not converged at max_samples = {limit} ("
                       + "; ".join(chk["failures"]) + ")"))
                break
            nxt = next_length(n, settings.samples, limit, chk["ess_ratio"])
            log(f"{n} draws per chain: {'; '.join(chk['failures'])}; extending every chain to {nxt} draws")
            n = nxt
    finally:
        if pool is not None:
            pool.shutdown()
    stats.update(spent)
    stats["_sampling_wall"] = np.asarray(time.perf_counter() - t0)
    if adaptive:
        stats["_rounds"] = rounds
    if start_potentials is not None:
        stats["_start_potentials"] = np.asarray(start_potentials)
    log(f"sampling done in {float(stats['_sampling_wall']):.1f} s")
    return samples, stats, (spec, data, builder)


def _latent_names(samples: dict) -> list[str]:
    """The latent sites among the sampled sites (non-centred offsets, scales and noise)."""
    return [k for k in samples if k.endswith(("__z", "__z_mu", "__omega", "__zs", "__tau")) or k.startswith("sigma_")]


def _natural_fn(builder) -> Callable:
    """One draw's latents -> its natural-scale quantities (what the model's deterministic sites hold): population and
    group parameters, noise, subject values ``<id>_subject`` and subject spreads ``<id>_sd_subject``."""
    def natural_all(one):
        pop, grp, noise = builder.natural(one)
        subj = {f"{k}_subject": v for k, v in builder.subject_values(one, pop, grp).items()}
        spread = {f"{k}_sd_subject": one[f"{k}__tau"] for k in builder.subject_level()}
        return {**pop, **grp, **noise, **subj, **spread}

    return natural_all


def natural_posterior(builder, samples: dict) -> dict[str, np.ndarray]:
    """The posterior group's variables [chain, draw, ...] from the sampled latents ``samples`` [chain, draw, ...]:
    the estimated parameters, the noise scales and the subject-level values and spreads."""
    import jax
    import jax.numpy as jnp

    C, D = next(iter(samples.values())).shape[:2]
    lat = {k: jnp.asarray(samples[k].reshape((C * D,) + samples[k].shape[2:])) for k in _latent_names(samples)}
    natural = {k: np.asarray(v).reshape((C, D) + np.shape(v)[1:])
               for k, v in jax.jit(jax.vmap(_natural_fn(builder)))(lat).items()}
    keep = [r.id for r in builder.estimated] + list(dict.fromkeys(builder.noise_names))
    posterior = {k: natural[k] for k in keep}
    posterior.update({k: v for k, v in natural.items() if k.endswith(("_subject", "_sd_subject"))})
    return posterior


def convergence_check(builder, data, samples: dict, thresholds: dict | None) -> dict:
    """R-hat and bulk/tail ESS of every posterior quantity (what ``diagnose`` checks, on the same natural-scale
    variables) against ``thresholds`` (the config's ``diagnostics``; only r_hat_max, ess_bulk_min and ess_tail_min
    are used: more draws cannot remove a divergence). Returns {"passed", "failures", "ess_ratio"}, where
    ``ess_ratio`` is the largest (threshold / ESS) over bulk and tail (above 1: that many times the draws are
    needed, if ESS grows in proportion)."""
    from ..diagnostics.convergence import Thresholds, convergence_table, verdict

    th = Thresholds.from_dict({k: v for k, v in (thresholds or {}).items()
                               if k in ("r_hat_max", "ess_bulk_min", "ess_tail_min")})
    post = natural_posterior(builder, samples)
    group_level = set(builder.group_level())
    coords = {"group": list(data.groups), "subject_id": list(data.subjects)}
    ds = xr.Dataset({k: (("chain", "draw") + (("group",) if k in group_level else ("subject_id",)
                                             if k.endswith("_subject") and not k.endswith("_sd_subject") else ())
                         [: v.ndim - 2], v) for k, v in post.items()})
    ds = ds.assign_coords({d: c for d, c in coords.items() if d in ds.dims})
    table = convergence_table(xr.DataTree(children={"posterior": xr.DataTree(ds)}))
    out = verdict(table, {}, th)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = max(float(np.nanmax(th.ess_bulk_min / table["ess_bulk"].astype(float))),
                    float(np.nanmax(th.ess_tail_min / table["ess_tail"].astype(float))))
    return {"passed": out["passed"], "failures": out["failures"], "ess_ratio": ratio,
            "r_hat_max": float(table["r_hat"].max()), "ess_bulk_min": float(table["ess_bulk"].min()),
            "ess_tail_min": float(table["ess_tail"].min())}


def next_length(current: int, step: int, limit: int, ess_ratio: float) -> int:
    """Draws per chain of the next round of a fit that has not converged after ``current``: with an ESS shortfall
    (``ess_ratio`` > 1), the length at which it would close with a 20 % margin, at least ``current + step / 2``,
    rounded up to 50 (each round restarts the chain processes: a few seconds each); when only R-hat fails,
    ``current + step``. Never more than ``limit``."""
    if np.isfinite(ess_ratio) and ess_ratio > 1.0:
        want = int(np.ceil(max(current + step / 2.0, current * ess_ratio * 1.2) / 50.0)) * 50
    else:
        want = current + step
    return int(min(limit, want))


def build_tree(samples: dict, stats: dict, problem, settings: SamplerSettings, attrs: dict,
               log: Callable[[str], None] = print) -> xr.DataTree:
    """Assemble the ArviZ DataTree of docs/ARCHITECTURE.md section 4 (posterior, sample_stats, log_likelihood,
    observed/constant data, prior, prior/posterior predictive)."""
    import jax
    import jax.numpy as jnp
    from arviz_base import from_dict

    from .sample import pointwise_draws

    spec, data, builder = problem
    C, D = next(iter(samples.values())).shape[:2]
    latent_names = _latent_names(samples)
    lat = {k: jnp.asarray(samples[k].reshape((C * D,) + samples[k].shape[2:])) for k in latent_names}
    key = jax.random.PRNGKey(settings.seed + 104729)
    t0 = time.perf_counter()
    post = pointwise_draws(builder, data.arrays, lat, key)
    log(f"log likelihood and posterior predictive for {C * D} draws in {time.perf_counter() - t0:.1f} s")
    n_prior = settings.predictive_draws
    prior_lat = builder.prior_latents(jax.random.PRNGKey(settings.seed + 15485863), n_prior)
    t0 = time.perf_counter()
    prior_pw = pointwise_draws(builder, data.arrays, prior_lat, jax.random.fold_in(key, 1))
    log(f"prior predictive for {n_prior} draws in {time.perf_counter() - t0:.1f} s")

    groups = list(data.groups)
    natural_all = _natural_fn(builder)
    posterior = natural_posterior(builder, samples)
    prior = {k: np.asarray(v)[None] for k, v in jax.vmap(natural_all)(prior_lat).items()}
    unconstrained = {k: samples[k] for k in latent_names if not k.startswith("sigma_")}
    depth = np.floor(np.log2(np.maximum(stats["num_steps"], 1))).astype(np.int64) + 1
    sample_stats = {
        "diverging": stats["diverging"].astype(bool),
        "tree_depth": depth,
        "n_steps": stats["num_steps"].astype(np.int64),
        "energy": stats["energy"],
        "acceptance_rate": stats["accept_prob"],
        "lp": -stats["potential_energy"],
        "step_size": stats["adapt_state.step_size"],
        "ode_failed": post["ode_failed"].reshape(C, D) > 0,  # the draw's ODE solve failed (it was never accepted)
    }
    m = data.measurements
    N = len(m)
    dims = {k: ["group"] for k in builder.group_level()}
    dims.update({k: ["measurement"] for k in ("obs", "time", "observable", "condition", "subject", "group_of",
                                               "known_sd")})
    dims.update({f"{k}_subject": ["subject_id"] for k in builder.subject_level()})
    for k in unconstrained:
        if k.endswith("__z") and k[:-3] in builder.group_level():
            dims[k] = ["group"]
        if k.endswith("__zs"):
            dims[k] = ["subject_id"]
    tree = from_dict(
        {
            "posterior": posterior,
            "unconstrained_posterior": unconstrained,
            "sample_stats": sample_stats,
            "log_likelihood": {"obs": post["log_likelihood"].reshape(C, D, N)},
            "posterior_predictive": {"obs": post["replicate"].reshape(C, D, N)},
            "observed_data": {"obs": m["value"].to_numpy(float)},
            "constant_data": {
                "time": m["time_min"].to_numpy(float),
                "observable": m["observable_id"].astype(str).to_numpy(),
                "condition": m["condition_id"].astype(str).to_numpy(),
                "subject": m["subject_id"].astype(str).to_numpy(),
                "group_of": m["group"].astype(str).to_numpy(),
                "known_sd": np.asarray(data.arrays.known_sd),
            },
            "prior": prior,
            "prior_predictive": {"obs": prior_pw["replicate"][None]},
        },
        coords={"group": groups, "measurement": np.arange(N), "subject_id": list(data.subjects)},
        dims=dims,
        attrs={"/": attrs},
    )
    mcoords = {
        "measurement_observable": ("measurement", m["observable_id"].astype(str).to_numpy()),
        "measurement_condition": ("measurement", m["condition_id"].astype(str).to_numpy()),
        "measurement_time": ("measurement", m["time_min"].to_numpy(float)),
        "measurement_group": ("measurement", m["group"].astype(str).to_numpy()),
    }
    for name in ("log_likelihood", "observed_data", "constant_data", "prior_predictive", "posterior_predictive"):
        tree[name] = tree[name].to_dataset().assign_coords(mcoords)
    return tree


def fit_summary(stats: dict, tree: xr.DataTree) -> dict:
    return {
        "sampling_wall_s": float(stats.get("_sampling_wall", np.nan)),
        "divergences": int(np.asarray(tree["sample_stats"]["diverging"]).sum()),
        "ode_failures": int(np.asarray(tree["sample_stats"]["ode_failed"]).sum()),
        "gradient_evaluations": int(np.asarray(tree["sample_stats"]["n_steps"]).sum()),
        # warmup leapfrog steps run by this fit (after a resume: only those since the checkpoint)
        "warmup_gradient_evaluations": int(np.asarray(stats.get("_warmup_gradients", 0)).sum()),
        # sampler.max_samples: each round's length and diagnostics (the last one is the posterior's)
        **({"rounds": stats["_rounds"]} if "_rounds" in stats else {}),
        # init: dispersed: each chain's start potential (negative log density at its local optimum)
        **({"chain_start_potentials": [float(v) for v in stats["_start_potentials"]]}
           if "_start_potentials" in stats else {}),
    }
