"""The Stan side of the peer comparison (PyStan 3 / httpstan). Never import JAX in a process that uses this module:
httpstan forks worker processes for its chains, and forking a process with JAX's threads running is unsafe.

Functions take the Stan data dict from ``export.export`` and return plain Python / numpy values.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np

from export import STAN_FILE

_ELAPSED = re.compile(r"Elapsed Time:\s*([0-9.eE+-]+) seconds \(Warm-up\)")
_SAMPLING = re.compile(r"([0-9.eE+-]+) seconds \(Sampling\)")
_GRAD = re.compile(r"Gradient evaluation took ([0-9.eE+-]+) seconds")


def program_code() -> str:
    return STAN_FILE.read_text()


def build(data: dict, seed: int = 1, cold: bool = False) -> tuple[object, dict]:
    """Compile (or load from httpstan's cache) and instantiate the model. ``cold`` removes this program's cached
    build first so the compile time is real. Returns (posterior, info)."""
    import httpstan.cache
    import httpstan.models
    import stan

    data = dict(data)
    data.setdefault("ode_solver", 0)
    code = program_code()
    name = httpstan.models.calculate_model_name(code)
    cached = False
    try:
        d = Path(httpstan.cache.model_directory(name))
        cached = d.exists()
        if cold and cached:
            shutil.rmtree(d)
            cached = False
    except Exception:  # noqa: BLE001 - cache layout is httpstan's; a failure here only affects the label
        pass
    t0 = time.perf_counter()
    posterior = stan.build(code, data=data, random_seed=seed)
    wall = time.perf_counter() - t0
    return posterior, {"build_s": wall, "was_cached": cached, "model_name": name}


def predicted_means(posterior, params: dict) -> np.ndarray:
    """Predicted means of every measurement (generated quantities, gq_mu = 1) at one parameter point."""
    fit = posterior.fixed_param(num_chains=1, num_samples=1, init=[params])
    return np.asarray(fit["mu_gq"])[:, 0]


def unconstrain(posterior, params: dict) -> np.ndarray:
    return np.asarray(posterior.unconstrain_pars(params), float)


def log_prob(posterior, u) -> float:
    return float(posterior.log_prob(list(map(float, u)), adjust_transform=True))


def grad_log_prob(posterior, u) -> np.ndarray:
    return np.asarray(posterior.grad_log_prob(list(map(float, u))), float)


def services_module(posterior):
    """httpstan's compiled extension module of this model: log_prob / log_prob_grad without the HTTP round trip."""
    import httpstan.models

    return httpstan.models.import_services_extension_module(posterior.model_name)


def time_gradient(posterior, u, repeats: int = 20) -> dict:
    """Wall time of one log density and one gradient (Jacobian-adjusted), called directly on the compiled module
    without the HTTP round trip. The module re-instantiates the model from the data on every call, so both figures
    include that (the same for both; small next to the ODE solves)."""
    mod = services_module(posterior)
    data = posterior.data
    u = list(map(float, u))
    mod.log_prob_grad(data, u, True)  # warm
    tg, tl = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mod.log_prob_grad(data, u, True)
        tg.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mod.log_prob(data, u, True)
        tl.append(time.perf_counter() - t0)
    return {"grad_median_s": float(np.median(tg)), "grad_min_s": float(np.min(tg)),
            "logp_median_s": float(np.median(tl)), "logp_min_s": float(np.min(tl)), "repeats": repeats}


def sample(posterior, chains: int, warmup: int, samples: int, target_accept: float, max_tree_depth: int,
           inits: list[dict] | None = None) -> tuple[object, dict]:
    """NUTS with diagonal metric adaptation (Stan's defaults otherwise). Warm-up draws are saved so that the
    leapfrog steps of the whole run are counted. Returns (fit, info with wall time and Stan's own timers)."""
    kw = dict(num_chains=chains, num_warmup=warmup, num_samples=samples, delta=target_accept,
              max_depth=max_tree_depth, save_warmup=True)
    if inits is not None:
        kw["init"] = inits
    t0 = time.perf_counter()
    fit = posterior.sample(**kw)
    wall = time.perf_counter() - t0
    warm, samp, grad = [], [], []
    for out in fit.stan_outputs:  # one per chain; a message can appear in several records, take the first
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        for found, dest in ((_ELAPSED.findall(text), warm), (_SAMPLING.findall(text), samp),
                            (_GRAD.findall(text), grad)):
            if found:
                dest.append(float(found[0]))
    return fit, {"wall_s": wall, "chain_warmup_s": warm, "chain_sampling_s": samp,
                 "stan_init_gradient_s": grad}


def draws_stats(fit, warmup: int) -> dict:
    """Sampler diagnostics as [chain, draw] arrays, split into warm-up and kept draws."""
    from export import by_chain

    C = fit.num_chains

    def arr(name):
        return by_chain(fit[name], C)[..., 0]  # scalars come as [1, draw*chain]

    out = {}
    for k in ("n_leapfrog__", "divergent__", "treedepth__", "stepsize__", "accept_stat__", "energy__", "lp__"):
        v = arr(k)
        out[k] = {"warmup": v[:, :warmup], "sampling": v[:, warmup:]}
    return out
