"""Posterior means of several runs of the same fit compared pairwise within Monte Carlo error (not a test).

    python benchmarks/stan/compare_runs.py --peer-work benchmarks/out/peer_work \
        --posterior seed1=results/fits/core/katz2000_clamp/posterior.nc

``--peer-work``: a ``bench_peer.py --keep-work`` folder (its myoglucose and Stan draws); ``--posterior NAME=PATH``:
further myoglucose posteriors of the same fit (``myoglucose fit`` NetCDF, for example with another ``--seed``). For
every pair of runs and every natural-scale parameter (group values split),
z = (mean_a - mean_b) / sqrt(MCSE_a^2 + MCSE_b^2) with ArviZ 1.3's MCSE of the mean; prints max |z| and the sum of
z^2 (about the number of quantities when the runs agree and the MCSEs are right). Two runs of one stack show what
agreement looks like, so a Stan-vs-myoglucose z is read against them, not against a fixed bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_peer import scalars  # noqa: E402  ({name[group]: [chain, draw]}, shared with the peer benchmark)


def mean_mcse(s: dict) -> dict:
    import arviz as az
    from arviz_base import from_dict

    m = az.mcse(from_dict({"posterior": s}), method="mean")
    return {k: (float(v.mean()), float(np.asarray(m["posterior"][k] if hasattr(m, "posterior") else m[k])))
            for k, v in s.items()}


def main(argv=None) -> int:
    import xarray as xr

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer-work", required=True)
    ap.add_argument("--posterior", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--out", default=None, help="JSON of every z (default: print only)")
    args = ap.parse_args(argv)
    w = Path(args.peer_work)
    meta = json.loads((w / "jax.json").read_text())["meta"]
    names, groups = meta["pop"] + meta["grp"] + meta["noise"], meta["groups"]
    jd, sd = dict(np.load(w / "jax_draws.npz")), dict(np.load(w / "stan_draws.npz"))
    runs = {"myoglucose (peer run)": scalars(jd, names, groups), "Stan (peer run)": scalars(sd, names, groups)}
    for spec in args.posterior:
        name, path = spec.split("=", 1)
        post = xr.open_datatree(path)["posterior"]
        runs[f"myoglucose ({name})"] = scalars({n: post[n].values for n in names}, names, groups)
    stats = {r: mean_mcse(s) for r, s in runs.items()}
    keys = list(runs)
    res = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            z = {k: (stats[a][k][0] - stats[b][k][0]) / np.hypot(stats[a][k][1], stats[b][k][1]) for k in stats[a]}
            res.append({"a": a, "b": b, "max_abs_z": max(abs(v) for v in z.values()),
                        "sum_z2": sum(v * v for v in z.values()), "n": len(z), "z": z})
            print(f"{a} vs {b}: max |z| {res[-1]['max_abs_z']:.2f}, sum z^2 {res[-1]['sum_z2']:.1f} on {len(z)} "
                  f"quantities; " + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
