"""Stan's NUTS with a dense (or diagonal) metric, without CmdStan: the Stan program translated by the ``stanc`` of
httpstan's wheel, compiled with ``nuts_driver.cpp`` against the Stan, Stan Math, Sundials and TBB that the wheel ships,
and run one process per chain, at most ``parallel`` at a time (CmdStan's way). PyStan 3 itself only offers the
diagonal metric (``hmc_nuts_diag_e_adapt``); the peer benchmark uses this for the dense metric that myoglucose's fits
use by default, so both stacks run the same algorithm.

The executable is cached under ``~/.cache/myoglucose/stan_driver/<hash>`` (hash of the program, the driver and the
httpstan version); ``build(cold=True)`` removes it first, so that the compile time is measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "nuts_driver.cpp"
_ELAPSED = re.compile(r"Elapsed Time: ([0-9.eE+-]+) seconds \(Warm-up\)\s*#\s*([0-9.eE+-]+) seconds \(Sampling\)")
_GRAD = re.compile(r"Gradient evaluation took ([0-9.eE+-]+) seconds")


def _httpstan_dir() -> Path:
    import httpstan

    return Path(httpstan.__file__).resolve().parent


def build(stan_file: Path, cold: bool = False) -> tuple[Path, dict]:
    """Compile ``stan_file`` with the driver; returns (executable, {build_s, was_cached, stanc, compiler flags})."""
    from importlib.metadata import version

    hs = _httpstan_dir()
    code = Path(stan_file).read_text()
    key = hashlib.sha256((code + DRIVER.read_text() + version("httpstan")).encode()).hexdigest()[:16]
    out_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "myoglucose" / "stan_driver" / key
    exe = out_dir / "nuts"
    if cold:
        shutil.rmtree(out_dir, ignore_errors=True)
    flags = ["-O3", "-std=c++17", "-Wno-sign-compare", "-DBOOST_DISABLE_ASSERTS",
             "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION", "-DSTAN_THREADS", "-D_REENTRANT",
             "-D_GLIBCXX_USE_CXX11_ABI=0"]  # httpstan's own flags for its model modules
    info = {"was_cached": exe.exists(), "flags": flags, "executable": str(exe)}
    t0 = time.perf_counter()
    if not exe.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        hpp = out_dir / "model.hpp"
        st = subprocess.run([str(hs / "stanc"), "--name", "peer_model", f"--o={hpp}", str(stan_file)],
                            capture_output=True, text=True)  # --o: never next to the .stan file
        if st.returncode != 0:
            raise RuntimeError(f"stanc failed on {stan_file}:\n{st.stderr}")
        main = out_dir / "main.cpp"
        main.write_text(f'#include "{hpp}"\n#include "{DRIVER}"\n')
        tmp = out_dir / "nuts.tmp"
        cc = subprocess.run(["g++", *flags, f"-I{hs / 'include'}", "-o", str(tmp), str(main), f"-L{hs / 'lib'}",
                             "-lsundials_cvodes", "-lsundials_idas", "-lsundials_nvecserial", "-ltbb",
                             f"-Wl,-rpath,{hs / 'lib'}"], capture_output=True, text=True)
        if cc.returncode != 0:
            raise RuntimeError(f"g++ failed building the Stan driver:\n{cc.stderr[-4000:]}")
        tmp.rename(exe)
    info["build_s"] = time.perf_counter() - t0
    return exe, info


def read_csv(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """A CmdStan-style CSV -> ({column: values}, the comment text)."""
    lines = path.read_text().splitlines()
    comments = "\n".join(x for x in lines if x.startswith("#"))
    rows = [x for x in lines if x and not x.startswith("#")]
    if not rows:
        raise RuntimeError(f"{path}: no header (the chain failed before sampling; see its log)")
    header = rows[0].split(",")
    vals = np.array([[float(v) for v in r.split(",")] for r in rows[1:]], float).reshape(-1, len(header))
    return {h: vals[:, i] for i, h in enumerate(header)}, comments


def sample(exe: Path, data: dict, inits: list[dict], work: Path, *, metric: str, warmup: int, samples: int,
           delta: float, max_depth: int, seed: int, parallel: int | None = None, refresh: int = 100,
           log=print) -> tuple[dict[str, np.ndarray], dict]:
    """One process per chain (``len(inits)`` chains, at most ``parallel`` at a time, default the CPU count); warm-up
    draws are kept. Returns ({column: [chain, iteration]}, {wall_s, chain_warmup_s, chain_sampling_s,
    stan_init_gradient_s, metric})."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "data.json").write_text(json.dumps(data))
    parallel = parallel or os.cpu_count() or 1
    pending = list(range(len(inits)))
    running: dict[int, subprocess.Popen] = {}
    t0 = time.perf_counter()
    old_term = signal.signal(signal.SIGTERM, _raise_exit)  # a killed benchmark takes its chain processes with it
    try:
        _run(exe, inits, work, pending, running, parallel, metric, warmup, samples, delta, max_depth, seed, refresh,
             t0, log)
    finally:
        for p in running.values():
            p.kill()
            p.wait()
        signal.signal(signal.SIGTERM, old_term)
    wall = time.perf_counter() - t0
    return _collect(work, len(inits), warmup, samples, wall, metric, parallel)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _run(exe, inits, work, pending, running, parallel, metric, warmup, samples, delta, max_depth, seed, refresh, t0,
         log) -> None:
    while pending or running:
        while pending and len(running) < parallel:
            c = pending.pop(0)
            (work / f"init_{c}.json").write_text(json.dumps(inits[c]))
            with open(work / f"chain_{c}.log", "w") as lf:
                running[c] = subprocess.Popen(
                    [str(exe), metric, str(work / "data.json"), str(work / f"init_{c}.json"),
                     str(work / f"chain_{c}.csv"), str(seed), str(c + 1), str(warmup), str(samples), str(delta),
                     str(max_depth), str(refresh)], stdout=lf, stderr=subprocess.STDOUT)
            log(f"Stan ({metric} metric): chain {c + 1} started")
        for c, p in list(running.items()):
            if p.poll() is not None:
                del running[c]
                if p.returncode != 0:
                    raise RuntimeError(f"Stan chain {c + 1} failed (exit {p.returncode}): "
                                       f"{(work / f'chain_{c}.log').read_text()[-2000:]}")
                log(f"Stan ({metric} metric): chain {c + 1} done at {time.perf_counter() - t0:.0f} s")
        time.sleep(0.5)


def _collect(work, chains, warmup, samples, wall, metric, parallel):
    cols, warm, samp, grad = {}, [], [], []
    for c in range(chains):
        d, comments = read_csv(work / f"chain_{c}.csv")
        n = warmup + samples
        if any(len(v) != n for v in d.values()):
            raise RuntimeError(f"Stan chain {c + 1}: {len(next(iter(d.values())))} rows, expected {n}")
        for k, v in d.items():
            cols.setdefault(k, []).append(v)
        m = _ELAPSED.search(comments)
        if m:
            warm.append(float(m.group(1)))
            samp.append(float(m.group(2)))
        g = _GRAD.search((work / f"chain_{c}.log").read_text())
        if g:
            grad.append(float(g.group(1)))
    return ({k: np.stack(v) for k, v in cols.items()},
            {"wall_s": wall, "chain_warmup_s": warm, "chain_sampling_s": samp, "stan_init_gradient_s": grad,
             "metric": metric, "parallel_processes": parallel, "runner": "nuts_driver.cpp (stan::services)"})


def columns_to_numpyro(cols: dict[str, np.ndarray], meta: dict, skip: int = 0) -> dict[str, np.ndarray]:
    """Driver CSV columns ([chain, iteration]) -> {NumPyro site name or natural parameter: [chain, draw, ...]},
    dropping the first ``skip`` iterations (the warm-up). Stan's names: ``z_grp.p.g`` is z_grp[p, g] (1-based)."""
    G = len(meta["groups"])

    def vec(name, n):
        return np.stack([cols[f"{name}.{i + 1}"][:, skip:] for i in range(n)], axis=-1)

    def mat(name, p):
        return np.stack([cols[f"{name}.{p + 1}.{g + 1}"][:, skip:] for g in range(G)], axis=-1)

    out = {}
    pop, grp, noise = meta["pop"], meta["grp"], meta["noise"]
    zp, pv = (vec("z_pop", len(pop)), vec("pop_val", len(pop))) if pop else (None, None)
    for i, p in enumerate(pop):
        out[f"{p}__z"] = zp[..., i]
        out[p] = pv[..., i]
    if grp:
        zm, om = vec("z_mu", len(grp)), vec("omega", len(grp))
        for i, p in enumerate(grp):
            out[f"{p}__z_mu"] = zm[..., i]
            out[f"{p}__omega"] = om[..., i]
            out[f"{p}__z"] = mat("z_grp", i)
            out[p] = mat("grp_val", i)
    sg = vec("sigma", len(noise))
    for i, n in enumerate(noise):
        out[n] = sg[..., i]
    return out


def sampler_stats(cols: dict[str, np.ndarray], warmup: int) -> dict:
    """The sampler's columns as {name: {"warmup": [chain, it], "sampling": [chain, it]}} (as stan_side.draws_stats)."""
    return {k: {"warmup": cols[k][:, :warmup], "sampling": cols[k][:, warmup:]}
            for k in ("n_leapfrog__", "divergent__", "treedepth__", "stepsize__", "accept_stat__", "energy__", "lp__")}
