"""NUTS: multi-start MAP initialisation, chains in parallel, posterior and predictive draws. No file I/O.

Chains in parallel (shared/research/inference.md section 0a): on jax 0.12 ``chain_method="parallel"`` (pmap) breaks inside
the implicit diffrax solver, so on CPU each chain runs in its own process (``processes``; results merged, identical
to a sequential run with the same seed) and on a GPU the chains are vectorised in one program (``vectorized``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CHAIN_METHODS = ("auto", "processes", "vectorized", "sequential")
INITS = ("map", "dispersed", "median")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    chains: int = 4
    warmup: int = 500
    samples: int = 500  # draws per chain (with max_samples: of the first round)
    max_samples: int | None = None  # None: exactly `samples`; else extend until converged, at most this many
    target_accept: float = 0.95
    dense_mass: bool = True
    max_tree_depth: int = 8
    init: str = "map"  # map | dispersed | median
    map_starts: int = 8
    map_steps: int = 200
    map_spread: float = 2.0  # starts at median + map_spread x (prior draw - median), on the unconstrained scale
    metric_init: str = "identity"  # identity | laplace (inverse Hessian at the MAP; with init median: identity)
    metric_shrinkage: float = 0.0  # dense warmup windows: pseudo-draws per dimension towards the previous metric
    metric_shrinkage_target: str = "previous"  # previous (window before) | initial (the warmup's starting metric)
    chain_method: str = "auto"
    seed: int = 20261125
    progress: bool = True
    predictive_draws: int = 200  # draws for prior predictive
    checkpoint_every: int = 100  # iterations (warmup included) between sampler checkpoints; 0: only after warmup

    def __post_init__(self):
        problems = []
        if self.chains < 1:
            problems.append(f"sampler.chains must be >= 1 (got {self.chains})")
        if self.warmup < 1 or self.samples < 1:
            problems.append(f"sampler.warmup and sampler.samples must be >= 1 (got {self.warmup}, {self.samples})")
        if self.max_samples is not None and self.max_samples < self.samples:
            problems.append(f"sampler.max_samples must be >= sampler.samples or null (got {self.max_samples} < "
                            f"{self.samples})")
        if not 0.5 <= self.target_accept < 1.0:
            problems.append(f"sampler.target_accept must be in [0.5, 1) (got {self.target_accept})")
        if not 1 <= self.max_tree_depth <= 15:
            problems.append(f"sampler.max_tree_depth must be in [1, 15] (got {self.max_tree_depth})")
        if self.init not in INITS:
            problems.append(f"sampler.init must be one of {INITS} (got {self.init!r})")
        if self.metric_init not in ("identity", "laplace"):
            problems.append(f"sampler.metric_init must be 'identity' or 'laplace' (got {self.metric_init!r})")
        if not 0.0 <= self.metric_shrinkage <= 100.0:
            problems.append(f"sampler.metric_shrinkage must be in [0, 100] (got {self.metric_shrinkage})")
        if self.metric_shrinkage_target not in ("previous", "initial"):
            problems.append("sampler.metric_shrinkage_target must be 'previous' or 'initial' (got "
                            f"{self.metric_shrinkage_target!r})")
        if self.chain_method not in CHAIN_METHODS:
            problems.append(f"sampler.chain_method must be one of {CHAIN_METHODS} (got {self.chain_method!r})")
        if self.checkpoint_every < 0:
            problems.append(f"sampler.checkpoint_every must be >= 0 (got {self.checkpoint_every})")
        if self.map_starts < 1:
            problems.append(f"sampler.map_starts must be >= 1 (got {self.map_starts})")
        if not 0.0 < self.map_spread <= 10.0:
            problems.append(f"sampler.map_spread must be in (0, 10] (got {self.map_spread})")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict | None) -> "SamplerSettings":
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {sorted(unknown)}")
        return cls(**d)

    @property
    def sample_limit(self) -> int:
        """Most draws per chain: ``max_samples``, or ``samples`` for a fixed length."""
        return self.samples if self.max_samples is None else self.max_samples

    @property
    def laplace_metric(self) -> bool:
        """Whether the warmup starts from the Laplace metric: asked for, and there is an optimum to take it at (the
        MAP, or with ``init: dispersed`` the best chain start)."""
        return self.metric_init == "laplace" and self.init in ("map", "dispersed")

    def resolved_chain_method(self, backend: str) -> str:
        if self.chain_method != "auto":
            return self.chain_method
        if backend == "gpu":
            return "vectorized"
        return "processes" if self.chains > 1 and (os.cpu_count() or 1) > 1 else "sequential"


def latent_model(builder) -> Callable:
    """The fit's latent sites alone: ``builder.model`` up to its first non-latent statement (the same sample sites
    and plates in the same order, so a seeded run draws the same values), without the ODE and the likelihood.

    Initialisation strategies and the (un)constraining transforms need only the latent sites. NumPyro finds them by
    running the model eagerly, which for the whole model solves the ODE op by op and differentiates it: seconds per
    call on 2 cores, and a fit's start-up made 10-20 such calls. On this model it is milliseconds. A builder without
    ``sample_latents`` (a toy model in the tests) is its own latent model."""
    if not hasattr(builder, "sample_latents"):
        return builder.model

    def model(a, y=None):
        builder.sample_latents()

    return model


def _init_z(builder, arrays, key, strategy) -> dict:
    """NumPyro's ``initialize_model(...).param_info.z`` (unconstrained start of every latent site) from the latent
    model: the same values, as long as the whole model's log density is finite there (checked by the caller)."""
    from numpyro.infer.util import initialize_model

    return initialize_model(key, latent_model(builder), model_args=(arrays,), model_kwargs={"y": arrays.values},
                            init_strategy=strategy).param_info.z


def _init_z_full(builder, arrays, key, strategy) -> dict:
    """``initialize_model`` on the whole model: it redraws (up to 100 times) until the log density and its gradient
    are finite. The slow path, taken only when the latent model's start is not finite under the whole model."""
    from numpyro.infer.util import initialize_model

    return initialize_model(key, builder.model, model_args=(arrays,), model_kwargs={"y": arrays.values},
                            init_strategy=strategy,
                            forward_mode_differentiation=builder.solver.adjoint == "forward").param_info.z


def potential_energy_fn(builder) -> Callable:
    """``potential_energy(builder.model, args, kwargs, z)`` as one jitted function per builder, shared by every
    program of a fit that evaluates the potential: the MAP search, the Laplace metric, ``NUTS.init`` and the NUTS
    step. JAX caches the jaxpr of a jitted function per argument shapes, and the JVP, partial evaluation and transpose
    of that jaxpr, so the model, its ODE solves and their sensitivities are traced and differentiated once per
    process instead of once per program (the step and the chain start each traced them again, about 2 s apiece on
    2 cores; docs/performance.md section 6). The compiled programs compute the same thing; XLA may round the
    inlined call differently in the last bits.
    A builder without ``sample_latents`` (a toy model in the tests, whose arguments need not be arrays) gets the
    plain function."""
    from numpyro.infer.util import potential_energy

    model = builder.model
    if not hasattr(builder, "sample_latents"):
        return lambda args, kwargs, z: potential_energy(model, args, kwargs, z)
    fn = builder.__dict__.get("_potential_energy_jit")
    if fn is None:
        fn = builder._potential_energy_jit = jax.jit(lambda args, kwargs, z: potential_energy(model, args, kwargs, z))
    return fn


def use_exported(builder, arrays, vg: Callable | None) -> None:
    """Make every program of this process that evaluates the fit's potential with ``arrays`` (the MAP search, the
    Laplace metric, a chain's start and its NUTS step) call ``vg``, the loaded export of ``potential``'s
    value-and-gradient (``exported.load_vg``), instead of tracing the model. None: trace again."""
    builder._exported_vg = None if vg is None else (vg, arrays)


def exported_vg(builder, arrays) -> Callable | None:
    """The exported value-and-gradient set by ``use_exported`` for these very ``arrays`` (else None)."""
    held = builder.__dict__.get("_exported_vg")
    return held[0] if held is not None and held[1] is arrays else None


def potential(builder, arrays):
    """The NUTS potential (negative log density on the unconstrained latent space) as a jitted value-and-gradient of
    a flat vector, and the sorted-site ``unravel`` NumPyro uses for its mass matrix. Build it once per fit and pass it
    to ``find_map`` and ``map_metric``, so that both use one compiled program. (``numpyro.infer.util.potential_energy``
    of the whole model: the function ``initialize_model`` returns, without running the model eagerly to get it.)"""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median

    fwd = builder.solver.adjoint == "forward"
    unravel = ravel_pytree(_init_z(builder, arrays, jax.random.PRNGKey(0), init_to_median(num_samples=5)))[1]
    loaded = exported_vg(builder, arrays)
    if loaded is not None:  # the exported program (inference/exported.py): no trace
        return loaded, unravel
    pe = potential_energy_fn(builder)

    def f(x):
        return pe((arrays,), {"y": arrays.values}, unravel(x))

    vg = jax.jit(lambda x: (f(x), jax.jacfwd(f)(x)) if fwd else jax.value_and_grad(f)(x))
    return vg, unravel


def latent_size(builder, arrays) -> int:
    """The number of unconstrained latent dimensions (the length of ``potential``'s flat vector)."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median

    return int(ravel_pytree(_init_z(builder, arrays, jax.random.PRNGKey(0), init_to_median(num_samples=5)))[0].size)


def start_points(builder, arrays, settings: SamplerSettings, key, n: int, first_median: bool, pot=None) -> list:
    """``n`` flat unconstrained starting points: the prior median (start 0, when ``first_median``) and overdispersed
    prior draws ``median + map_spread * (draw - median)`` on NumPyro's unconstrained scale (Gelman & Rubin 1992:
    starts more spread than the target). ``map_spread`` 1 is plain prior draws. Over-dispersion matters when the best
    optimum lies in the prior's tail: full Sorensen 1978 has its global optimum (potential 324.48) at
    akt_ec50 4.4 prior sd below the median, which 8 x 200-step optimisations from plain prior draws never reached and
    2 of 5 reach from spread 2 or 3 (docs/inference.md).

    The median and the draws are NumPyro's ``initialize_model`` starts (``init_to_median(15)``, ``init_to_sample``),
    taken from the latent model; one whose log density or gradient is not finite under the whole model (``pot``, the
    fit's ``potential``) is drawn again by ``initialize_model`` on the whole model, as NumPyro itself would."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median, init_to_sample

    vg = (pot if pot is not None else potential(builder, arrays))[0]

    def flat(k, strategy):
        x = ravel_pytree(_init_z(builder, arrays, k, strategy))[0]
        v, g = vg(x)
        if np.isfinite(float(v)) and bool(np.all(np.isfinite(np.asarray(g)))):
            return x
        return ravel_pytree(_init_z_full(builder, arrays, k, strategy))[0]

    keys = jax.random.split(key, n)
    centre = flat(keys[0], init_to_median(num_samples=15))
    return [centre if (i == 0 and first_median) else centre + settings.map_spread * (flat(k, init_to_sample) - centre)
            for i, k in enumerate(keys)]


def _optimise_starts(builder, arrays, settings: SamplerSettings, key, n: int, pot, first_median: bool,
                     log: Callable[[str], None], label: str) -> list[tuple[np.ndarray, float]]:
    """``n`` L-BFGS runs of ``settings.map_steps`` steps on the flat unconstrained latent vector, from
    ``start_points``. Returns [(x, potential)] in start order."""
    vg, _ = pot
    out = []
    for i, x0 in enumerate(start_points(builder, arrays, settings, key, n, first_median, pot)):
        x, val = _lbfgs(vg, x0, settings.map_steps)
        log(f"{label} {i + 1}/{n}: potential {val:.3f}")
        out.append((x, val))
    return out


def find_map(builder, arrays, settings: SamplerSettings, key, log: Callable[[str], None] = print,
             pot=None) -> dict:
    """Multi-start MAP on the unconstrained latent space (BFGS from the prior median and prior draws). Returns
    constrained latents. ``pot``: the fit's ``potential(builder, arrays)`` (built here when not given)."""
    from numpyro.infer.util import constrain_fn

    pot = pot if pot is not None else potential(builder, arrays)
    runs = _optimise_starts(builder, arrays, settings, key, settings.map_starts, pot, True, log, "MAP start")
    finite = [(x, v) for x, v in runs if np.isfinite(v)]
    if not finite:
        raise RuntimeError("MAP initialisation failed: every start gave a non-finite log density")
    best = min(finite, key=lambda r: r[1])[0]
    best = lift_collapsed_spreads(builder, best, pot, settings.map_steps, log)[0]
    return constrain_fn(latent_model(builder), (arrays,), {"y": arrays.values}, pot[1](best))


#: a between-group (``__omega``) or within-group (``__tau``) spread below this quantile of its half-normal prior at
#: an optimum has collapsed into the neck of the hierarchy's funnel (see ``lift_collapsed_spreads``)
SPREAD_COLLAPSE_QUANTILE = 0.05


def spread_priors(builder) -> dict[str, float]:
    """Half-normal prior scale of every hierarchical spread site of a model builder: ``<id>__omega`` (between
    groups) and ``<id>__tau`` (between subjects of a group), as ``sample_latents`` declares them."""
    from .numpyro_model import GROUP_SPREAD_PRIOR, SUBJECT_SPREAD_PRIOR

    if not hasattr(builder, "group_level"):
        return {}
    out = {}
    grouped, by_subject = set(builder.group_level()), set(builder.subject_level())
    for r in builder.estimated:
        if r.id in grouped:
            out[f"{r.id}__omega"] = GROUP_SPREAD_PRIOR * r.prior_scale
        if r.id in by_subject:
            out[f"{r.id}__tau"] = SUBJECT_SPREAD_PRIOR * r.prior_scale
    return out


def lift_collapsed_spreads(builder, x: np.ndarray, pot, steps: int,
                           log: Callable[[str], None] = print) -> tuple[np.ndarray, float | None]:
    """Move an optimum whose hierarchical spreads collapsed out of the funnel's neck.

    The joint MAP of a hierarchy is degenerate where a spread can shrink to zero: with centred group values (basal
    glucose) the density grows without bound as ``omega -> 0`` with every group at the population value, and L-BFGS
    walks down that neck until it runs out of steps (core Bergman 1981: ``gb__omega`` 3e-4 against a posterior mean
    of 0.2; the Hessian there has eigenvalues of 5e6 along the group values, variance ratios to the posterior of
    2e4-5e5). A Laplace metric from that point makes every early NUTS trajectory hit the tree-depth cap.

    Each spread below the ``SPREAD_COLLAPSE_QUANTILE`` quantile of its half-normal prior is set to the prior's median
    and held there while the other latents are re-optimised (``steps`` L-BFGS steps): a point inside the posterior's
    bulk where the group values follow their data, which is where the chains start and the Laplace metric is taken.
    The posterior is unchanged (warmup still adapts from there). ``x`` is the flat unconstrained optimum; returns the
    (possibly) moved point and its potential (None when nothing was lifted)."""
    from scipy.stats import halfnorm

    priors = spread_priors(builder)
    vg, unravel = pot
    x = np.array(x, dtype=np.float64)
    sites = unravel(jnp.asarray(x))
    index = unravel(jnp.arange(x.size, dtype=x.dtype))  # flat position of every element of every site
    held, lifted = [], []
    for name, scale in priors.items():
        if name not in sites:
            continue
        floor = float(halfnorm.ppf(SPREAD_COLLAPSE_QUANTILE, scale=scale))
        values = np.atleast_1d(np.exp(np.asarray(sites[name], dtype=np.float64)))  # positive: unconstrained = log
        for i, v in zip(np.atleast_1d(np.asarray(index[name])).astype(int), values):
            if v < floor:
                x[i] = np.log(float(halfnorm.median(scale=scale)))
                held.append(i)
                lifted.append(f"{name} {v:.3g} < {floor:.3g}")
    if not held:
        return x, None
    free = np.setdiff1d(np.arange(x.size), held)

    def vg_free(z):  # the fit's compiled value-and-gradient on the free coordinates (no new trace)
        full = x.copy()
        full[free] = np.asarray(z)
        v, g = vg(jnp.asarray(full))
        return v, jnp.asarray(g)[free]

    z, val = _lbfgs(vg_free, x[free], steps)
    x[free] = np.asarray(z)
    log(f"hierarchical spread(s) collapsed at the optimum ({'; '.join(lifted)}, the prior's "
        f"{SPREAD_COLLAPSE_QUANTILE:g} quantile): held at the prior median while the other latents were re-optimised "
        f"(potential {val:.3f}); the chains start and the Laplace metric is taken there")
    return x, val


def find_chain_starts(builder, arrays, settings: SamplerSettings, key, log: Callable[[str], None] = print,
                      pot=None) -> tuple[list[dict], list[float]]:
    """Over-dispersed starts (``init: dispersed``): chain ``c`` starts at the local optimum reached from its own
    over-dispersed prior draw (``start_points``) by ``settings.map_steps`` L-BFGS steps. Chains that reach separate
    modes start in them, so R-hat can see a multimodal posterior, which chains that all start at one shared MAP may
    never leave. A start whose optimisation ends at a non-finite density takes the best finite one instead (logged).
    Returns (constrained starts, potentials) in chain order."""
    from numpyro.infer.util import constrain_fn

    pot = pot if pot is not None else potential(builder, arrays)
    runs = _optimise_starts(builder, arrays, settings, key, settings.chains, pot, False, log, "chain start")
    finite = [r for r in runs if np.isfinite(r[1])]
    if not finite:
        raise RuntimeError("dispersed initialisation failed: every start gave a non-finite log density")
    best = min(finite, key=lambda r: r[1])
    starts, vals, xs = [], [], []
    for c, (x, v) in enumerate(runs):
        if not np.isfinite(v):
            log(f"chain {c}: its start did not reach a finite log density; it starts at the best start instead")
            x, v = best
        x, lifted = lift_collapsed_spreads(builder, x, pot, settings.map_steps, log)
        v = v if lifted is None else lifted
        z = constrain_fn(latent_model(builder), (arrays,), {"y": arrays.values}, pot[1](x))
        starts.append({k: np.asarray(val) for k, val in z.items()})
        vals.append(float(v))
        xs.append(np.asarray(x))
    spread = max(vals) - min(vals)
    dist = max(float(np.max(np.abs(a - b))) for a in xs for b in xs)
    log(f"chain starts: potentials {', '.join(f'{v:.2f}' for v in vals)} (spread {spread:.2f}); largest distance "
        f"between two starts {dist:.2f} on the unconstrained scale"
        + ("; the starts are separate optima (or unconverged): R-hat will show whether the chains meet" if
           spread > 1.0 or dist > 1.0 else ""))
    return starts, vals


# bounds on the variances of the Laplace metric in unconstrained coordinates (the latents are standardised: prior
# sd about 1), so that a flat or non-convex direction at the MAP cannot make the first leapfrog steps absurdly long
LAPLACE_VAR_MIN, LAPLACE_VAR_MAX = 1e-8, 4.0


def hessian_fd(grad_fn: Callable, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """Symmetrised central finite-difference Hessian from a gradient: column i is (g(x + h e_i) - g(x - h e_i)) / 2h.
    2 n gradient calls of one compiled function (no second-order autodiff: the ODE sensitivities sit in a custom VJP
    that forward mode cannot enter)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    H = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (np.asarray(grad_fn(x + e), np.float64) - np.asarray(grad_fn(x - e), np.float64)) / (2 * h)
    return 0.5 * (H + H.T)


def laplace_inverse_metric(H: np.ndarray, dense: bool) -> tuple[np.ndarray, dict]:
    """Inverse mass matrix from the Hessian of the potential at the MAP (the Laplace approximation's covariance).

    Eigenvalues are floored: a direction with curvature <= 1 / LAPLACE_VAR_MAX (flat, or non-convex at a saddle)
    gets variance LAPLACE_VAR_MAX, and variances are at least LAPLACE_VAR_MIN. Returns the matrix (dense [n, n]
    or its diagonal [n]) and a summary (condition number of H, directions floored)."""
    if not np.all(np.isfinite(H)):
        raise ValueError("the Hessian at the MAP is not finite")
    w, V = np.linalg.eigh(H)
    var = np.clip(1.0 / np.maximum(w, 1.0 / LAPLACE_VAR_MAX), LAPLACE_VAR_MIN, LAPLACE_VAR_MAX)
    cov = (V * var) @ V.T
    cov = 0.5 * (cov + cov.T)
    info = {"n": int(H.shape[0]), "floored": int(np.sum(w < 1.0 / LAPLACE_VAR_MAX)),
            "eig_min": float(w.min()), "eig_max": float(w.max()),
            "condition": float(w.max() / max(w.min(), 1e-300)) if w.min() > 0 else float("inf")}
    return (cov if dense else np.diag(cov).copy()), info


def map_metric(builder, arrays, init: dict, settings: SamplerSettings, log: Callable[[str], None] = print,
               pot=None):
    """The Laplace inverse mass matrix at a constrained MAP point ``init`` (flat, NumPyro's sorted-site order).
    ``pot``: the fit's ``potential(builder, arrays)`` (built here when not given)."""
    vg, unravel = pot if pot is not None else potential(builder, arrays)
    x = np.asarray(flat_unconstrained(builder, arrays, init))
    t0 = time.perf_counter()
    H = hessian_fd(lambda p: vg(jnp.asarray(p))[1], x)
    M, info = laplace_inverse_metric(H, settings.dense_mass)
    log(f"Laplace metric at the MAP: {info['n']} dimensions, Hessian eigenvalues {info['eig_min']:.3g} .. "
        f"{info['eig_max']:.3g}, {info['floored']} direction(s) floored to variance {LAPLACE_VAR_MAX:g}, "
        f"{2 * info['n']} gradients in {time.perf_counter() - t0:.1f} s")
    return M


def _lbfgs(vg, x, steps: int):
    """L-BFGS-B (scipy) on the jitted value-and-gradient; a non-finite value is treated as a wall (large value)."""
    from scipy.optimize import minimize

    def fun(z):
        v, g = vg(jnp.asarray(z))
        v, g = float(v), np.asarray(g, dtype=np.float64)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e12, np.zeros_like(g)
        return v, g

    x0 = np.asarray(x, dtype=np.float64)
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": int(steps), "maxfun": int(2 * steps)})
    val = float(res.fun)
    return jnp.asarray(res.x), (val if val < 1e12 else np.inf)


EXTRA_FIELDS = ("diverging", "num_steps", "energy", "accept_prob", "potential_energy", "adapt_state.step_size")


def _stderr(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_kernel(builder, settings: SamplerSettings, init: dict | None, **overrides):
    """The NUTS kernel of a fit (``overrides`` go to ``numpyro.infer.NUTS``, e.g. a fixed step size in tests).
    For a ``ModelBuilder`` it is ``_LatentInitNUTS`` (the same sampler, a start-up without eager model runs);
    otherwise NumPyro's NUTS with the shrunk warmup windows of ``sampler.metric_shrinkage``."""
    fwd = builder.solver.adjoint == "forward"
    strategy = _init_strategy(init)
    kw = dict(target_accept_prob=settings.target_accept, dense_mass=settings.dense_mass,
              max_tree_depth=settings.max_tree_depth, init_strategy=strategy, forward_mode_differentiation=fwd,
              metric_shrinkage=settings.metric_shrinkage, metric_shrinkage_target=settings.metric_shrinkage_target)
    kw.update(overrides)
    if hasattr(builder, "sample_latents"):
        return _latent_init_nuts()(builder, **kw)
    return _nuts()(builder.model, **kw)


def _init_strategy(init: dict | None):
    """NumPyro init strategy of a chain: its constrained start ``init``, or the prior median when None."""
    from numpyro.infer import init_to_median, init_to_value

    return init_to_value(values=init) if init is not None else init_to_median(num_samples=15)


def _nuts():
    """``_NUTS`` (defined on first use: NumPyro is imported lazily)."""
    global _NUTS
    if _NUTS is not None:
        return _NUTS
    from numpyro.infer import NUTS

    from .adaptation import use_adapter

    class _NUTSWithShrinkage(NUTS):
        """NumPyro's NUTS; with ``metric_shrinkage > 0`` its warmup adapts a dense metric with
        ``adaptation.shrinkage_warmup_adapter`` (window estimates shrunk towards the previous metric)."""

        def __init__(self, model=None, *, metric_shrinkage: float = 0.0, metric_shrinkage_target: str = "previous",
                     **kw):
            super().__init__(model, **kw)
            self._metric_shrinkage = float(metric_shrinkage)
            self._metric_shrinkage_target = metric_shrinkage_target

        def init(self, *args, **kwargs):
            # NumPyro builds its adapter in init; "initial" shrinks towards the metric the warmup starts from
            with use_adapter(self._metric_shrinkage, self._metric_shrinkage_target, self._inverse_mass_matrix):
                return super().init(*args, **kwargs)

    _NUTS = _NUTSWithShrinkage
    return _NUTS


_NUTS = None


def _latent_init_nuts():
    """``_LatentInitNUTS`` (defined on first use: NumPyro is imported lazily)."""
    global _LATENT_INIT_NUTS
    if _LATENT_INIT_NUTS is not None:
        return _LATENT_INIT_NUTS
    from functools import partial

    from jax.flatten_util import ravel_pytree
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import ParamInfo, _transforms_from_trace, initialize_model

    class _LatentInitNUTS(_nuts()):
        """NumPyro's NUTS on ``builder.model``, initialised without running that model eagerly.

        ``NUTS.init`` calls ``initialize_model`` on the model, which runs it op by op three times (a prototype
        trace, the init strategy's trace, the potential and its gradient), ODE solves included: 5 s per chain for
        the core Katz clamp and 33 s for full Roy 2007 (implicit solver) on 2 cores, paid again by every chain.
        Here the site transforms and the starting point come from ``latent_model`` (milliseconds) and the potential
        and gradient at the start from one jitted program (a cache hit in the persistent compilation cache). The
        sampler's potential is ``potential_energy`` of the whole model with the model's arguments, as NumPyro
        builds it (``dynamic_args``), so the compiled step is NumPyro's. The start's potential and gradient are the
        compiled program's values (eagerly evaluated ones differ from them by solver-tolerance rounding: 3e-9 in
        the potential of the core Katz clamp), so chains differ from a stock ``NUTS`` run in the last digits and,
        over many iterations, in their draws; they are the same Markov chain otherwise, and identical on rerun."""

        def __init__(self, builder, **kw):
            super().__init__(builder.model, **kw)
            self._builder = builder
            self._vg = {}

        def _init_state(self, rng_key, model_args, model_kwargs, init_params):
            b = self._builder
            info = initialize_model(rng_key, latent_model(b), dynamic_args=True, init_strategy=self._init_strategy,
                                    model_args=model_args, model_kwargs=model_kwargs)
            fwd = self._forward_mode_differentiation
            vec = jnp.ndim(rng_key) != 1
            vg = None if vec else exported_vg(b, model_args[0] if model_args else None)
            if vg is not None:  # the exported value-and-gradient: neither the start nor the step traces the model
                from .exported import potential_from_exported

                pe_exported = potential_from_exported(vg)
                if init_params is None:
                    z = info.param_info.z
                    flat, unravel = ravel_pytree(z)
                    pe, g = vg(flat)
                    if not (np.isfinite(float(pe)) and np.isfinite(np.asarray(g)).all()):
                        raise RuntimeError("Cannot find valid initial parameters: the log density or its gradient "
                                           "is not finite at the chain's start")
                    init_params = ParamInfo(z, pe, unravel(g))
                return self._finish_init(lambda *args, **kwargs: pe_exported, info, init_params)
            pe_fn = potential_energy_fn(b)  # traced once per process (shared with the MAP search)

            if init_params is None:
                z = info.param_info.z

                def value_and_grad(z, args, kwargs):
                    f = partial(pe_fn, args, kwargs)
                    return (f(z), jax.jacfwd(f)(z)) if fwd else jax.value_and_grad(f)(z)

                if vec not in self._vg:  # one compiled program per kernel (a reused kernel's next chain: no retrace)
                    self._vg[vec] = jax.jit(jax.vmap(value_and_grad, (0, None, None)) if vec else value_and_grad)
                pe, grad = self._vg[vec](z, model_args, model_kwargs)
                finite = np.isfinite(np.asarray(pe)).all() and all(
                    np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
                if not finite:
                    raise RuntimeError("Cannot find valid initial parameters: the log density or its gradient is not "
                                       "finite at the chain's start")
                init_params = ParamInfo(z, pe, grad)

            def potential_fn_gen(*args, **kwargs):
                return partial(pe_fn, args, kwargs)

            return self._finish_init(potential_fn_gen, info, init_params)

        def _finish_init(self, potential_fn_gen, info, init_params):
            if self._init_fn is None:
                self._init_fn, self._sample_fn = hmc(potential_fn_gen=potential_fn_gen, kinetic_fn=self._kinetic_fn,
                                                     algo=self._algo)
            self._potential_fn_gen = potential_fn_gen
            self._postprocess_fn = info.postprocess_fn
            transforms = _transforms_from_trace(info.model_trace, raise_warnings=False)
            self._inv_transforms = transforms.inv_transforms
            self._dynamic_support = transforms.dynamic_support
            return init_params

    _LATENT_INIT_NUTS = _LatentInitNUTS
    return _LATENT_INIT_NUTS


_LATENT_INIT_NUTS = None


def run_nuts(builder, arrays, settings: SamplerSettings, init: dict | None, chain_ids: list[int],
             vectorized: bool = False, checkpoint_dir=None, fingerprint: str = "", reuse: dict | None = None,
             **kernel_overrides) -> dict[str, Any]:
    """Run NUTS for the given chain ids (one chain at a time unless ``vectorized``). Returns numpy arrays
    ``samples[site] -> [chain, draw, ...]`` (latent sites) and ``stats[field] -> [chain, draw]``. ``init``: one
    constrained start for every chain, a list of them indexed by chain id (``init: dispersed``), or None (median).

    Chain ``c`` starts from ``fold_in(PRNGKey(seed), c)``; with ``checkpoint_dir`` its state is saved there every
    ``settings.checkpoint_every`` iterations (and after warmup) and a matching checkpoint found there is resumed.

    Chains run one after another share one kernel and its compiled step (NumPyro's own sequential chains re-``init``
    one kernel too; only the start differs, set per chain), so the second chain neither retraces nor recompiles.
    ``reuse``: a dict that keeps that kernel across calls (a chain worker process running several chains of one fit,
    or rounds of ``sampler.max_samples``); the caller keys it by everything the kernel depends on (model, data,
    settings, ``kernel_overrides``). The draws are the same as with a fresh kernel per chain."""
    from .checkpoint import chain_file

    out_s: dict[str, list] = {}
    out_t: dict[str, list] = {}
    per_chain = isinstance(init, (list, tuple))  # init: dispersed, one start per chain (indexed by chain id)
    runs = [chain_ids] if vectorized else [[c] for c in chain_ids]
    reuse = {} if reuse is None else reuse
    for ids in runs:
        init_params = None
        if per_chain and len(ids) > 1:  # vectorised chains: stacked unconstrained starts, one row per chain
            init_params = _stacked_unconstrained(builder, arrays, [init[c] for c in ids])
        one = init[ids[0]] if per_chain and len(ids) == 1 else (None if per_chain else init)
        if len(ids) == 1 and "kernel" in reuse:
            kernel = reuse["kernel"]
            kernel._init_strategy = _init_strategy(one)  # this chain's start; everything else is the same
        else:
            kernel = make_kernel(builder, settings, one, **kernel_overrides)
            if len(ids) == 1:
                reuse["kernel"] = kernel
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(settings.seed), c) for c in ids])
        t0 = time.perf_counter()
        _stderr(f"chain(s) {ids}: compiling and sampling")
        res = sample_chains(kernel, (arrays,), {"y": arrays.values}, keys if len(ids) > 1 else keys[0],
                            settings.warmup, settings.samples, init_params=init_params,
                            checkpoint_every=settings.checkpoint_every,
                            checkpoint=chain_file(checkpoint_dir, ids) if checkpoint_dir else None,
                            fingerprint=fingerprint, progress=settings.progress, label=f"chain(s) {ids}")
        samples, stats = res["samples"], res["stats"]
        elapsed = time.perf_counter() - t0
        div = int(np.asarray(stats["diverging"]).sum())
        steps = int(np.asarray(stats["num_steps"]).sum())
        wg = int(res["warmup_gradients"].sum())
        _stderr(f"chain(s) {ids}: {settings.warmup} warmup + {settings.samples} draws in {elapsed:.1f} s (incl. "
                f"compile; {res['resumed_at']} iterations restored from a checkpoint), {wg} gradient evaluations "
                f"in warmup (this run), {steps} after warmup, {div} divergences")
        for k, v in samples.items():
            out_s.setdefault(k, []).append(v)
        for k, v in stats.items():
            out_t.setdefault(k, []).append(v)
        out_t.setdefault("_elapsed", []).append(np.full((len(ids),), elapsed))
        out_t.setdefault("_warmup_gradients", []).append(res["warmup_gradients"])
    return {"samples": {k: np.concatenate(v, axis=0) for k, v in out_s.items()},
            "stats": {k: np.concatenate(v, axis=0) for k, v in out_t.items()}}


def unconstrained(builder, arrays, start: dict) -> dict:
    """A constrained start (latent site -> value) on NumPyro's unconstrained latent space."""
    from numpyro.infer.util import unconstrain_fn

    return unconstrain_fn(latent_model(builder), (arrays,), {"y": arrays.values},
                         {k: jnp.asarray(v) for k, v in start.items()})


def flat_unconstrained(builder, arrays, start: dict):
    """A constrained start -> the flat unconstrained vector (sorted sites) that ``potential`` takes."""
    from jax.flatten_util import ravel_pytree

    return ravel_pytree(unconstrained(builder, arrays, start))[0]


def _stacked_unconstrained(builder, arrays, starts: list[dict]) -> dict:
    """Constrained per-chain starts -> NumPyro's unconstrained init_params with a leading chain axis."""
    zs = [unconstrained(builder, arrays, s) for s in starts]
    return {k: jnp.stack([z[k] for z in zs]) for k in zs[0]}


def _strong(tree):
    """The same pytree with every leaf strongly typed (weak types would change the compiled step's signature between
    the first and later iterations, and between a fresh and a resumed chain)."""
    from jax import lax

    return jax.tree.map(lambda x: lax.convert_element_type(x, jnp.result_type(x)), tree)


def _committed(tree):
    """The same pytree with every leaf committed to the default device, as the compiled step's outputs are. JAX
    compiles a jitted function once per argument signature, and whether each argument is committed to a device is
    part of it: a fresh ``kernel.init`` state (partly uncommitted), the step's own outputs (committed) and a state
    restored from a checkpoint (uncommitted) were three signatures, so every chain compiled the step twice and the
    first chain of each resumed round a third time (about 10 s each with an empty compilation cache, 0.5-1 s from a
    warm one; docs/performance.md section 6)."""
    device = jax.devices()[0]
    return jax.tree.map(lambda x: jax.device_put(x, device), tree)


def sample_chains(kernel, model_args: tuple, model_kwargs: dict, key, warmup: int, samples: int, *,
                  init_params=None, extra_fields=EXTRA_FIELDS, checkpoint_every: int = 0, checkpoint=None,
                  fingerprint: str = "",
                  progress: bool = False, label: str = "chain", log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """``warmup + samples`` NUTS iterations of one chain (``key`` of shape [2]) or of chains vectorised in one
    program (``key`` [C, 2]), one compiled kernel step per iteration.

    This replaces ``numpyro.infer.MCMC.run`` (the same kernel calls, so the same Markov chain as MCMC with the same
    key) so that a chain can stop and continue at any iteration: the compiled step does not depend on how many
    iterations run between two checkpoints, so a fit that was killed and resumed from ``checkpoint`` gives
    bit-identical draws to an uninterrupted one. Returns ``samples[site] -> [chain, draw, ...]`` (latent sites,
    constrained; no deterministic sites), ``stats[field] -> [chain, draw]`` and ``resumed_at`` (iterations
    restored). ``init_params``: unconstrained starting point (a leading chain axis when vectorised); None: the
    kernel's init strategy."""
    from operator import attrgetter

    from . import checkpoint as ckpt

    vec = jnp.ndim(key) == 2
    total = warmup + samples
    state = _committed(_strong(kernel.init(key, warmup, init_params, model_args=model_args,
                                           model_kwargs=model_kwargs)))
    compiled = kernel.__dict__.setdefault("_myoglucose_compiled", {})  # a reused kernel's programs (run_nuts)
    # the arguments' identities (the arrays of one fit; the cache entry keeps them alive, so an id is never reused)
    ckey = (vec, tuple(extra_fields), tuple(map(id, model_args)), tuple((k, id(v)) for k, v in
                                                                        sorted(model_kwargs.items())))
    if ckey not in compiled:
        # latent sites on their constrained scale; deterministic sites are left out (they would replay the model, an
        # ODE solve per draw and a compile of its own; build_tree computes what it needs from the latents)
        pp = kernel.get_constrain_fn(model_args, model_kwargs, return_deterministic=False)
        getters = {f: attrgetter(f) for f in extra_fields}

        def step(s):
            s = _strong(kernel.sample(s, model_args, model_kwargs))
            return s, {f: g(s) for f, g in getters.items()}

        compiled[ckey] = (jax.jit(jax.vmap(pp) if vec else pp), jax.jit(step), (model_args, model_kwargs))
    post, step, _ = compiled[ckey]

    it, draws, stats = 0, {}, {}
    if checkpoint is not None:
        loaded = ckpt.load_state(checkpoint, state, fingerprint, log)
        if loaded is not None:
            n = max(0, loaded[1] - warmup)
            if any(len(v) != n for v in (*loaded[2].values(), *loaded[3].values())):
                log(f"{label}: ignoring checkpoint {checkpoint}: {loaded[1]} iterations but another number of draws")
            else:
                state, it, d, t = loaded
                state = _committed(state)
                if it > total:  # fewer draws requested than checkpointed: the first ones are the same chain
                    d, t, it = {k: v[:samples] for k, v in d.items()}, {k: v[:samples] for k, v in t.items()}, total
                draws = {k: list(v) for k, v in d.items()}
                stats = {k: list(v) for k, v in t.items()}
                log(f"{label}: resuming after iteration {it} of {total} from {checkpoint}")
    resumed_at = it

    def stacked(lists):
        return {k: np.stack(v) for k, v in lists.items()}

    def save():
        ckpt.save_state(checkpoint, state, it, stacked(draws), stacked(stats), fingerprint)

    warm_grads = np.zeros(np.shape(key)[:-1], dtype=np.int64)  # leapfrog steps in warmup run by this process
    every_log = max(1, total // 20)
    t0 = time.perf_counter()
    while it < total:
        state, st = step(state)
        it += 1
        if it <= warmup:
            warm_grads += np.asarray(st["num_steps"]) if "num_steps" in st else 0
        else:
            z = post(state.z)
            for k, v in z.items():
                draws.setdefault(k, []).append(np.asarray(v))
            for k, v in st.items():
                stats.setdefault(k, []).append(np.asarray(v))
        if checkpoint is not None and (it in (warmup, total) or (checkpoint_every and it % checkpoint_every == 0)):
            save()
        if progress and (it % every_log == 0 or it == total):
            phase = "warmup" if it <= warmup else "sampling"
            ss = np.asarray(state.adapt_state.step_size)
            ndiv = int(np.sum(stats["diverging"])) if "diverging" in stats else 0
            log(f"{label}: iteration {it}/{total} ({phase}), step size {np.round(ss, 4).tolist()}, {ndiv} divergences "
                f"after warmup, {time.perf_counter() - t0:.1f} s")
    out_d, out_t = stacked(draws), stacked(stats)
    if vec:  # [draw, chain, ...] -> [chain, draw, ...]
        out_d = {k: np.swapaxes(v, 0, 1) for k, v in out_d.items()}
        out_t = {k: np.swapaxes(v, 0, 1) for k, v in out_t.items()}
    else:
        out_d = {k: v[None] for k, v in out_d.items()}
        out_t = {k: v[None] for k, v in out_t.items()}
    return {"samples": out_d, "stats": out_t, "resumed_at": resumed_at,
            "warmup_gradients": np.atleast_1d(warm_grads)}


def pointwise_draws(builder, arrays, latents: dict, key, batch: int = 50) -> dict[str, np.ndarray]:
    """Log likelihood, replicated data and failed solves for every draw in ``latents`` (leading axis = draws)."""
    n = next(iter(latents.values())).shape[0]
    fn = jax.jit(jax.vmap(lambda lat, k: builder.pointwise(lat, arrays, k)))
    lls, reps, fails = [], [], []
    keys = jax.random.split(key, n)
    for s in range(0, n, batch):
        e = min(n, s + batch)
        chunk = {k: v[s:e] for k, v in latents.items()}
        kk = keys[s:e]
        if e - s < batch:  # pad to one compiled shape
            pad = batch - (e - s)
            chunk = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
            kk = jnp.concatenate([kk, jnp.repeat(kk[-1:], pad, axis=0)])
        ll, rep, fail = jax.block_until_ready(fn(chunk, kk))
        lls.append(np.asarray(ll)[: e - s])
        reps.append(np.asarray(rep)[: e - s])
        fails.append(np.asarray(fail)[: e - s])
    return {"log_likelihood": np.concatenate(lls), "replicate": np.concatenate(reps),
            "ode_failed": np.concatenate(fails)}
