"""The nine behaviours of ``shared/MODEL.md``: simulations, the numbers checked, and one panel figure.

Every scenario is a protocol on one timeline (built here as data, in the same format as ``protocols/*.yaml``),
simulated from the basal fasting state with the nominal ("healthy") or the "insulin_resistant" parameter set of
``models/<variant>/parameter_sets.yaml``. All scenarios are padded to one shape so one compiled solver serves them all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from .model.protocol import Protocol, build_inputs, n_breakpoints, parse_protocol
from .model.simulate import SolverSettings
from .model.spec import ModelSpec, nominal_params

TS = 480  # saved points per scenario
BW, BSA = 75.0, 1.9  # reference adult [kg], [m^2]
DAY = 1440.0


def clock(day: float, hh: int = 9, mm: int = 0) -> float:
    return day * DAY + hh * 60.0 + mm


def _p(name, end, events, desc=""):
    return parse_protocol({"name": name, "description": desc, "end": end, "events": events}, f"<behaviour {name}>")


def clamp_events(start, dose=40.0, dur=180.0):
    return [{"type": "insulin_infusion", "start": start, "duration_min": dur, "rate": dose, "unit": "mU/m2/min"},
            {"type": "glucose_clamp", "start": start, "duration_min": dur, "target": "basal"}]


def exercise(start, dur=60.0, inten=0.70):
    return {"type": "exercise", "start": start, "duration_min": dur, "intensity": inten}


def scenarios() -> dict[str, tuple[Protocol, np.ndarray]]:
    """Named scenarios -> (protocol, save times)."""
    out: dict[str, tuple[Protocol, np.ndarray]] = {}

    def add(name, prot, *windows):
        pts = [np.linspace(0.0, prot.end, TS // 2)]
        per = (TS - TS // 2) // max(len(windows), 1)
        for a, b in windows:
            pts.append(np.linspace(a, b, per))
        t = np.unique(np.concatenate(pts))
        t = np.sort(np.concatenate([t, np.full(TS - t.size, prot.end)])) if t.size < TS else t[np.linspace(0, t.size - 1, TS).astype(int)]
        out[name] = (prot, t)

    add("clamp40", _p("clamp40", 180, clamp_events(0, 40)), (120, 180))
    add("clamp120", _p("clamp120", 240, clamp_events(0, 120, 240)), (180, 240))
    add("ex70_basal_ins", _p("ex70_basal_ins", 300, [exercise(60, 60, 0.70)]), (50, 180))
    add("ex40", _p("ex40", 300, [exercise(60, 60, 0.40)]), (50, 180))
    add("ex70", _p("ex70", 300, [exercise(60, 60, 0.70)]), (50, 180))
    add("ex50", _p("ex50", 300, [exercise(60, 60, 0.50)]), (50, 180))
    add("clamp40_ex", _p("clamp40_ex", 180, clamp_events(0, 40) + [exercise(60, 60, 0.70)]), (50, 130))
    add("ex70_120", _p("ex70_120", 420, [exercise(60, 120, 0.70)]), (50, 420))
    add("ex65_180", _p("ex65_180", 480, [exercise(60, 180, 0.65)]), (50, 480))
    add("ex70_lowgly", _p("ex70_lowgly", clock(1, 14), [exercise(clock(0, 18), 90, 0.75), exercise(clock(1, 9), 60, 0.70)]),
        (clock(1, 8), clock(1, 14)))
    add("ex70_next", _p("ex70_next", clock(1, 14), [exercise(clock(1, 9), 60, 0.70)]), (clock(1, 8), clock(1, 14)))
    for h in (3, 24, 48, 72):
        start = clock(0, 10) + h * 60.0
        add(f"post_ex_clamp40_{h}h", _p(f"post_ex_clamp40_{h}h", start + 180, [exercise(clock(0, 9), 60, 0.70)]
                                        + clamp_events(start, 40)), (start + 120, start + 180))
        add(f"rest_clamp40_{h}h", _p(f"rest_clamp40_{h}h", start + 180, clamp_events(start, 40)),
            (start + 120, start + 180))
    start = clock(0, 10) + 24 * 60.0
    add("post_ex_clamp120_24h", _p("post_ex_clamp120_24h", start + 240, [exercise(clock(0, 9), 60, 0.70)]
                                   + clamp_events(start, 120, 240)), (start + 180, start + 240))
    add("rest_clamp120_24h", _p("rest_clamp120_24h", start + 240, clamp_events(start, 120, 240)),
        (start + 180, start + 240))
    # 12 weeks training (3 x 45 min at 70 %), clamps 72 h after the last session and after 8 weeks detraining
    train_end = clock(0, 9) + 83 * DAY
    c1 = clock(86, 9)
    c2 = clock(142, 9)
    ev = [{"type": "training", "start": clock(0, 9), "weeks": 12, "sessions_per_week": 3, "duration_min": 45,
           "intensity": 0.70}] + clamp_events(c1, 40) + clamp_events(c2, 40)
    add("training", _p("training", c2 + 180, ev), (c1 + 120, c1 + 180), (c2 + 120, c2 + 180))
    add("sedentary", _p("sedentary", c2 + 180, clamp_events(c1, 40) + clamp_events(c2, 40)), (c1 + 120, c1 + 180),
        (c2 + 120, c2 + 180))
    del train_end
    return out


@dataclasses.dataclass
class BehaviourResults:
    table: pd.DataFrame  # behaviour, check, value, lower, upper, passed
    curves: dict  # name -> dict of arrays for the figure


def load_parameter_sets(spec: ModelSpec) -> dict[str, dict[str, float]]:
    for d in reversed(spec.lineage):
        f = Path(d) / "parameter_sets.yaml"
        if f.exists():
            doc = yaml.safe_load(f.read_text()) or {}
            return {k: dict(v or {}) for k, v in doc.items()}
    return {"healthy": {}}


class Simulator:
    """One compiled solver for all scenarios (full state set, padded inputs)."""

    def __init__(self, spec: ModelSpec, solver: dict | None):
        import jax

        from .model.simulate import observables, solve, trajectory_fluxes

        self.spec = spec
        self.sc = scenarios()
        self.K = max(n_breakpoints(p) for p, _ in self.sc.values())
        s = SolverSettings.from_dict(solver)
        self.settings = SolverSettings(name=s.name, rtol=s.rtol, atol=s.atol, max_steps=max(s.max_steps, 60000),
                                       adjoint="reverse", dt0=s.dt0)
        settings = self.settings

        @jax.jit
        def run(p, u, ts, t1):
            sol = solve(p, u, ts, t1, settings)
            return sol.ok, sol.ys, observables(p, u, ts, sol), trajectory_fluxes(p, u, ts, sol)

        self._run = run

    def __call__(self, name: str, overrides: dict[str, float], insulin_clamp_at: float | None = None):
        import jax.numpy as jnp

        prot, ts = self.sc[name]
        p = {k: jnp.asarray(v) for k, v in nominal_params(self.spec, overrides).items()}
        knots = None
        if insulin_clamp_at is not None:  # plasma insulin held at its basal value (forcing)
            knots = (np.array([0.0, prot.end]), np.array([insulin_clamp_at, insulin_clamp_at]))
        else:
            knots = None
        u = build_inputs(prot, BW, BSA, knots, n_breaks=self.K, n_knots=2)
        if knots is None:
            u = dataclasses_replace_forced(u)
        ok, ys, obs, fl = self._run(p, u, jnp.asarray(ts), jnp.asarray(prot.end))
        if not bool(ok):
            raise RuntimeError(f"behaviour scenario {name!r} failed to solve")
        return ts, ys, obs, fl


def dataclasses_replace_forced(u):
    """Kinetic insulin with 2 dummy knots (same array shapes as the forced case)."""
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.tree_at(lambda x: (x.ins_t, x.ins_v), u, (jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0])))


def _at(ts, y, t):
    return float(np.interp(t, ts, np.asarray(y)))


def _mean(ts, y, a, b):
    m = (ts >= a) & (ts <= b)
    return float(np.mean(np.asarray(y)[m]))


def check_behaviours(spec: ModelSpec, solver: dict | None = None, repo_root: Path | None = None,
                     log: Callable[[str], None] = print) -> BehaviourResults:
    sets = load_parameter_sets(spec)
    healthy = sets.get("healthy", {})
    ir = sets.get("insulin_resistant", {})
    sim = Simulator(spec, solver)
    rows, curves = [], {}

    def check(beh, what, value, lo=-np.inf, hi=np.inf):
        ok = bool(lo <= value <= hi)
        rows.append({"behaviour": beh, "check": what, "value": value, "lower": lo, "upper": hi, "passed": ok})
        log(f"[{'ok' if ok else 'FAIL'}] B{beh} {what}: {value:.4g} (expected [{lo:.4g}, {hi:.4g}])")

    # 1. muscle share of disposal at clamp steady state
    for nm, dose in (("clamp40", 40), ("clamp120", 120)):
        ts, ys, obs, fl = sim(nm, healthy)
        end = ts[-1]
        share = _mean(ts, fl.u_muscle, end - 30, end) / _mean(ts, fl.rd, end - 30, end)
        check(1, f"muscle share of glucose disposal, clamp {dose} mU/m2/min, last 30 min", share, 0.75, 0.85)
        curves[f"b1_{nm}"] = (ts, np.asarray(fl.u_muscle), np.asarray(fl.rd))
    # 2. exercise at basal insulin: several-fold muscle uptake, also insulin resistant
    for label, ov in (("healthy", healthy), ("insulin resistant", ir)):
        ib = float(nominal_params(spec, ov)["ib"])
        ts, ys, obs, fl = sim("ex70_basal_ins", ov, insulin_clamp_at=ib)
        fold = _mean(ts, fl.u_muscle, 100, 120) / _at(ts, fl.u_muscle, 30)
        check(2, f"muscle uptake fold at 70 % VO2max with insulin held basal ({label})", fold, 2.5, 20)
        curves[f"b2_{label}"] = (ts, np.asarray(fl.u_muscle))
    # 3. exercise + insulin > either alone (muscle uptake in the last 20 min of exercise, 100-120 min)
    ib = float(nominal_params(spec, healthy)["ib"])
    _, _, _, f_ins = sim("clamp40", healthy)
    ts3, _, _, f_ex = sim("ex70_basal_ins", healthy, insulin_clamp_at=ib)
    ts_b, _, _, f_both = sim("clamp40_ex", healthy)
    ts_c, _, _, _ = sim("clamp40", healthy)
    u_ins = _mean(ts_c, f_ins.u_muscle, 100, 120)
    u_ex = _mean(ts3, f_ex.u_muscle, 100, 120)
    u_both = _mean(ts_b, f_both.u_muscle, 100, 120)
    check(3, "uptake (exercise + insulin) / max(exercise alone, insulin alone)", u_both / max(u_ins, u_ex), 1.05, 10)
    curves["b3"] = {"insulin": u_ins, "exercise": u_ex, "both": u_both}
    # 4. post-exercise clamp: more GIR at submaximal insulin 3-24 h after, fading by 48-72 h; small at max insulin
    gains = {}
    for h in (3, 24, 48, 72):
        tse, _, oe, _ = sim(f"post_ex_clamp40_{h}h", healthy)
        tsr, _, orr, _ = sim(f"rest_clamp40_{h}h", healthy)
        ge = _mean(tse, oe["gir"], tse[-1] - 60, tse[-1])
        gr = _mean(tsr, orr["gir"], tsr[-1] - 60, tsr[-1])
        gains[h] = ge / gr - 1.0
    check(4, "relative GIR gain of a 40 mU/m2/min clamp 3 h after exercise", gains[3], 0.08, 1.0)
    check(4, "relative GIR gain 24 h after exercise", gains[24], 0.05, 1.0)
    check(4, "GIR gain at 72 h / gain at 24 h (fades)", gains[72] / gains[24], -0.2, 0.35)
    tse, _, oe, _ = sim("post_ex_clamp120_24h", healthy)
    tsr, _, orr, _ = sim("rest_clamp120_24h", healthy)
    g120 = _mean(tse, oe["gir"], tse[-1] - 60, tse[-1]) / _mean(tsr, orr["gir"], tsr[-1] - 60, tsr[-1]) - 1.0
    check(4, "gain at maximal insulin (120 mU/m2/min) / gain at 40 mU/m2/min, 24 h after", g120 / gains[24], -0.2, 0.5)
    curves["b4"] = {"hours": [3, 24, 48, 72], "gain": [gains[h] for h in (3, 24, 48, 72)], "gain120": g120}
    # 5. AMPK threshold
    amp = {}
    for nm, inten in (("ex40", 0.4), ("ex50", 0.5), ("ex70", 0.7)):
        ts, ys, obs, fl = sim(nm, healthy)
        amp[inten] = float(np.max(np.asarray(obs["ampk_fold"])))
        curves[f"b5_{nm}"] = (ts, np.asarray(obs["ampk_fold"]))
    check(5, "peak AMPK fold at 40 % VO2max", amp[0.4], 1.0, 1.5)
    check(5, "peak AMPK fold at 70 % VO2max", amp[0.7], 3.0, 6.0)
    ts, ys, obs, fl = sim("ex70", healthy)
    check(5, "AMPK fold 3 h after a 70 % bout (back to baseline)", _at(ts, obs["ampk_fold"], 120 + 180), 0.9, 1.3)
    # 6. IL-6: duration, intensity, glycogen, half-life
    def il6_peak(nm, ov=healthy, window=None):
        ts, ys, obs, fl = sim(nm, ov)
        y = np.asarray(obs["il6"])
        if window is not None:
            m = (ts >= window[0]) & (ts <= window[1])
            return ts[m], y[m]
        return ts, y

    t60, y60 = il6_peak("ex70")
    t120, y120 = il6_peak("ex70_120")
    t50, y50 = il6_peak("ex50")
    il6b = float(nominal_params(spec, healthy)["il6_basal"])
    check(6, "IL-6 at end of 120 min / end of 60 min at 70 %", _at(t120, y120, 180) / _at(t60, y60, 120), 1.2, 10)
    check(6, "peak IL-6 at 70 % / at 50 % VO2max (60 min)", y60.max() / y50.max(), 1.2, 50)
    tl, yl = il6_peak("ex70_lowgly", window=(clock(1, 8), clock(1, 14)))
    tn, yn = il6_peak("ex70_next", window=(clock(1, 8), clock(1, 14)))
    check(6, "peak IL-6 with low glycogen / normal glycogen", yl.max() / yn.max(), 1.1, 10)
    t180, y180 = il6_peak("ex65_180")
    check(6, "IL-6 fold rise after 3 h at 65 % VO2max", _at(t180, y180, 240) / il6b, 10, 60)
    k = int(np.argmax(y180))
    tail_t, tail_y = t180[k:], y180[k:] - il6b
    half = tail_t[np.argmax(tail_y <= 0.5 * tail_y[0])] - tail_t[0] if np.any(tail_y <= 0.5 * tail_y[0]) else np.inf
    check(6, "apparent IL-6 half-life after the bout [min]", float(half), 30, 150)
    curves["b6"] = {"60 min 70 %": (t60, y60), "120 min 70 %": (t120, y120), "60 min 50 %": (t50, y50),
                    "180 min 65 %": (t180, y180)}
    # 7. training and detraining
    tt, yt, ot, ft = sim("training", healthy)
    tsd, ysd, osd, fsd = sim("sedentary", healthy)
    c1, c2 = clock(86, 9), clock(142, 9)
    mito_tr = _at(tt, yt.mito, c1 - 60) / _at(tsd, ysd.mito, c1 - 60)
    lipid_tr = _at(tt, yt.lipid, c1 - 60) / _at(tsd, ysd.lipid, c1 - 60)
    fat_tr = _at(tt, ft.fat_share, c1 - 60) - _at(tsd, fsd.fat_share, c1 - 60)
    m_tr = _mean(tt, ot["gir"], c1 + 120, c1 + 180) / _mean(tsd, osd["gir"], c1 + 120, c1 + 180)
    m_det = _mean(tt, ot["gir"], c2 + 120, c2 + 180) / _mean(tsd, osd["gir"], c2 + 120, c2 + 180)
    mito_det = _at(tt, yt.mito, c2 - 60) / _at(tsd, ysd.mito, c2 - 60)
    check(7, "mitochondrial density after 12 weeks training / sedentary", mito_tr, 1.15, 2.0)
    check(7, "DAG/ceramide after training / sedentary", lipid_tr, 0.3, 0.95)
    check(7, "rise of the fat share of resting muscle fuel after training", fat_tr, 0.01, 0.5)
    check(7, "clamp M-value 72 h after training / sedentary", m_tr, 1.05, 2.0)
    check(7, "mitochondrial gain left after 8 weeks detraining (fraction of the trained gain)",
          (mito_det - 1.0) / (mito_tr - 1.0), -0.1, 0.5)
    check(7, "M-value gain left after detraining (fraction)", (m_det - 1.0) / (m_tr - 1.0), -0.2, 0.6)
    curves["b7"] = (tt, np.asarray(yt.mito), np.asarray(yt.lipid), tsd, np.asarray(ysd.mito))
    # 8. seed table: sedentary insulin resistant vs active insulin sensitive (trained healthy), direction per row
    ts_ir, y_ir, o_ir, f_ir = sim("sedentary", ir)
    ts_a, y_a, o_a, f_a = sim("training", healthy)
    c = c1 + 170
    pre = c1 - 60
    rows8 = [
        ("insulin-signalling efficiency (higher when active)", _at(ts_a, f_a.sig_efficiency, pre) / _at(ts_ir, f_ir.sig_efficiency, pre), 1.0001, np.inf),
        ("membrane GLUT4 under insulin (higher when active)", _at(ts_a, y_a.glut4_pm, c) / _at(ts_ir, y_ir.glut4_pm, c), 1.0001, np.inf),
        ("mitochondrial density (higher when active)", _at(ts_a, y_a.mito, pre) / _at(ts_ir, y_ir.mito, pre), 1.0001, np.inf),
        ("fat share of resting fuel (higher when active)", _at(ts_a, f_a.fat_share, pre) / _at(ts_ir, f_ir.fat_share, pre), 1.0001, np.inf),
        ("DAG/ceramide (lower when active)", _at(ts_a, y_a.lipid, pre) / _at(ts_ir, y_ir.lipid, pre), 0, 0.9999),
        ("inflammatory tone (lower when active)", _at(ts_a, y_a.infl, pre) / _at(ts_ir, y_ir.infl, pre), 0, 0.9999),
    ]
    for what, v, lo, hi in rows8:
        check(8, f"active / sedentary-IR: {what}", v, lo, hi)
    curves["b8"] = [(w, v) for w, v, _, _ in rows8]
    # 9. insulin-resistant M-value in the published range (40 mU/m2/min ~ 1 mU/kg/min: IGT 5.4, mild T2D 4.7)
    ts, ys, obs, fl = sim("clamp40", ir)
    m_ir = _mean(ts, obs["gir"], 120, 180)
    ts, ys, obs_h, fl = sim("clamp40", healthy)
    m_h = _mean(ts, obs_h["gir"], 120, 180)
    check(9, "M-value of the insulin-resistant set, 40 mU/m2/min clamp [mg/kg/min]", m_ir, 3.0, 6.0)
    check(9, "M-value of the healthy set, 40 mU/m2/min clamp [mg/kg/min] (NGT 8.3 +- 0.6)", m_h, 6.5, 10.0)
    curves["b9"] = (ts, np.asarray(obs["gir"]), np.asarray(obs_h["gir"]))
    return BehaviourResults(table=pd.DataFrame(rows), curves=curves)


def plot_behaviours(res: BehaviourResults):
    """One 3x3 panel figure: each behaviour as the model shows it."""
    from matplotlib.figure import Figure

    c = res.curves
    fig = Figure(figsize=(15, 12), layout="constrained")
    ax = fig.subplots(3, 3).ravel()
    ts, um, rd = c["b1_clamp120"]
    ax[0].plot(ts, rd, label="total disposal")
    ax[0].plot(ts, um, label="muscle")
    ax[0].set(title="1. Muscle share of clamp disposal", xlabel="time [min]", ylabel="uptake [mg/kg/min]")
    ax[0].legend(fontsize=7)
    for k, lab in (("b2_healthy", "healthy"), ("b2_insulin resistant", "insulin resistant")):
        ax[1].plot(c[k][0], c[k][1], label=lab)
    ax[1].axvspan(60, 120, color="0.9")
    ax[1].set(title="2. Exercise 70 % at basal insulin", xlabel="time [min]", ylabel="muscle uptake [mg/kg/min]")
    ax[1].legend(fontsize=7)
    b3 = c["b3"]
    ax[2].bar(list(b3), list(b3.values()), color=["C0", "C1", "C2"])
    ax[2].set(title="3. Exercise + insulin", ylabel="muscle uptake [mg/kg/min]")
    b4 = c["b4"]
    ax[3].plot(b4["hours"], 100 * np.asarray(b4["gain"]), "o-", label="40 mU/m2/min")
    ax[3].plot([24], [100 * b4["gain120"]], "s", label="120 mU/m2/min")
    ax[3].set(title="4. Post-exercise clamp GIR gain", xlabel="hours after exercise", ylabel="GIR gain [%]")
    ax[3].legend(fontsize=7)
    for k, lab in (("b5_ex40", "40 %"), ("b5_ex50", "50 %"), ("b5_ex70", "70 %")):
        ax[4].plot(c[k][0], c[k][1], label=lab)
    ax[4].set(title="5. AMPK vs intensity", xlabel="time [min]", ylabel="AMPK [fold of rest]")
    ax[4].legend(fontsize=7)
    for lab, (t, y) in c["b6"].items():
        ax[5].plot(t, y, label=lab)
    ax[5].set(title="6. Plasma IL-6", xlabel="time [min]", ylabel="IL-6 [pg/mL]")
    ax[5].legend(fontsize=7)
    tt, mito, lipid, tsd, mito_sd = c["b7"]
    ax[6].plot(tt / DAY, mito, label="mitochondria (trained)")
    ax[6].plot(tt / DAY, lipid, label="DAG/ceramide (trained)")
    ax[6].plot(tsd / DAY, mito_sd, "--", label="mitochondria (sedentary)")
    ax[6].axvspan(0, 84, color="0.93")
    ax[6].set(title="7. Training (12 wk) and detraining", xlabel="time [day]", ylabel="relative to sedentary")
    ax[6].legend(fontsize=7)
    rows = c["b8"]
    ax[7].barh([r[0][:38] for r in rows], [r[1] for r in rows], color="C2")
    ax[7].axvline(1.0, color="k", lw=0.8)
    ax[7].set(title="8. Active IS / sedentary IR (seed table)", xlabel="ratio")
    ax[7].tick_params(axis="y", labelsize=6)
    ts, g_ir, g_h = c["b9"]
    ax[8].plot(ts, g_h, label="healthy")
    ax[8].plot(ts, g_ir, label="insulin resistant")
    ax[8].axhspan(3.0, 6.0, color="0.9", label="published IR range")
    ax[8].set(title="9. Clamp 40 mU/m2/min M-value", xlabel="time [min]", ylabel="GIR [mg/kg/min]")
    ax[8].legend(fontsize=7)
    return fig
