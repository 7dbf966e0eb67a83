"""MAP residuals of nested model changes on one dataset (docs/inference.md, "What fixed it").

Each step is a set of parameter-table overrides on top of a base variant (the same keys as ``overrides:`` in a
model.yaml). For every step the script writes a temporary variant beside a copy of ``models/``, runs the same
multi-start MAP as a fit's initialisation, and prints the root-mean-square residual per observable and condition
(glucose in its unit, insulin on the log scale). Run from the repository root:

    python scripts/map_ablation.py --tidy-dir results/tidy/katz2000_fsivgtt --base core
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

IVGTT = {"ib": {"estimate": 1, "level": "subject", "hierarchy": "centered"},
         "sec_glc_power": {"estimate": 1, "level": "group"}}
EXCHANGE = {k: {"estimate": 1, "level": "population"} for k in ("k1", "k2", "v_g")}
INSULIN = {k: {"estimate": 1, "level": "population"} for k in ("n_ins", "v_ins")}
LIVER = {k: {"estimate": 1, "level": "population"} for k in ("egp_glc_power", "k_ins_liv")}
#: the steps measured in docs/inference.md, each a complete set of overrides on top of ``--base`` (``core``)
STEPS = {
    "core": {},
    "+ basal insulin and beta-cell sensitivity": IVGTT,
    "+ glucose exchange and volume (= core_ivgtt)": {**IVGTT, **EXCHANGE},
    "core_ivgtt + insulin clearance and volume": {**IVGTT, **EXCHANGE, **INSULIN},
    "core_ivgtt + EGP autoregulation and hepatic insulin delay": {**IVGTT, **EXCHANGE, **LIVER},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tidy-dir", required=True, type=Path)
    ap.add_argument("--base", default="core")
    ap.add_argument("--config", default=ROOT / "config" / "config.yaml", type=Path)
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    from myoglucose import runtime

    runtime.configure("cpu", os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    import jax

    from myoglucose.inference.fit import FitJob, load_problem
    from myoglucose.inference.sample import SamplerSettings, find_map

    cfg = yaml.safe_load(args.config.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(ROOT / "models", models)
        for name, overrides in STEPS.items():
            vdir = models / f"ablation_{list(STEPS).index(name)}"
            vdir.mkdir()
            (vdir / "model.yaml").write_text(yaml.safe_dump({"id": vdir.name, "parent": args.base,
                                                             "overrides": overrides or None}))
            job = FitJob(tidy_dir=str(args.tidy_dir), model_dir=str(vdir), repo_root=str(ROOT), solver=cfg["solver"],
                         sampler=dict(cfg["sampler"], map_starts=args.starts, map_steps=args.steps))
            _, data, b = load_problem(job)
            lat = find_map(b, data.arrays, SamplerSettings.from_dict(job.sampler), jax.random.PRNGKey(1),
                           log=lambda m: None)
            d, ok = b.observation(lat, data.arrays)
            m = data.measurements.assign(mu=np.asarray(d.mu))
            log_scale = m["observable_id"].str.startswith("insulin")
            m["res"] = np.where(log_scale, np.log(m["value"]) - np.log(m["mu"]), m["value"] - m["mu"])
            rms = m.groupby(["observable_id", "condition_id"])["res"].apply(lambda r: float(np.sqrt(np.mean(r ** 2))))
            total = m.groupby("observable_id")["res"].apply(lambda r: float(np.sqrt(np.mean(r ** 2))))
            print(f"== {name}: {len(b.estimated)} estimated parameters, solves ok: {bool(np.all(ok))}")
            print("   overall: " + ", ".join(f"{k} {v:.3g}" for k, v in total.items()))
            for (o, c), v in rms.items():
                print(f"   {o:16s} {c:24s} {v:.3g}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
