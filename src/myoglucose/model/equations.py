r"""The myoglucose model: one readable place for every equation.

A multi-scale ODE system of how skeletal-muscle contraction restores insulin sensitivity. Time is in minutes,
glucose masses in mg/kg body weight, concentrations in mg/dL (glucose), mU/L (insulin) and pg/mL (IL-6); signalling
states are dimensionless fractions in [0, 1]; slow adaptive states (myokines, PGC-1alpha, mitochondria, lipids,
inflammation) are dimensionless folds of a sedentary reference.

Layout: ``State`` (named states, never ``y[3]``) -> ``Inputs`` (protocol forcings at time t) -> ``fluxes`` (every flux on
its own line with unit and citation key from ``models/references.bib``) -> ``vector_field`` (the balances).
The twelve mechanisms of ``shared/MODEL.md`` are marked ``[M1]`` ... ``[M12]``.

Parameters are a ``dict[str, Array]`` keyed by the ``parameterId`` column of ``models/<variant>/parameters.tsv``;
``PARAMETER_NAMES`` below is the complete list, and a test ties it one to one to the tables.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax import Array

from .protocol import Inputs

LN2 = 0.6931471805599453


class State(eqx.Module):
    """Named model states. Units in brackets."""

    # --- exercise and energy charge [M1, M2]
    vo2: Array  # oxygen uptake above rest, fraction of VO2max [-]
    ampk: Array  # active (alpha2) AMPK, fraction of total [-]
    # --- insulin-independent GLUT4 translocation [M3]
    tbc1d1_p: Array  # TBC1D1/TBC1D4 phosphorylated on AMPK/contraction sites, fraction [-]
    # --- insulin kinetics and action [M8, M4]
    ins: Array  # plasma insulin [mU/L]
    ins_int: Array  # interstitial (remote) insulin acting on muscle [mU/L]
    ins_liv: Array  # insulin acting on the liver (delayed) [mU/L]
    akt: Array  # active Akt, fraction [-]
    as160: Array  # AS160/TBC1D4 phosphorylated on Akt sites, fraction [-]
    # --- GLUT4 pools [M3, M4, M6]
    glut4_pm: Array  # GLUT4 at the plasma membrane, fraction of total muscle GLUT4 [-]
    glut4_in: Array  # intracellular GLUT4 (storage vesicles), fraction of total [-]
    # --- whole-body glucose [M7]
    gp: Array  # plasma glucose mass [mg/kg]
    gt: Array  # interstitial/tissue glucose mass [mg/kg]
    egp_ex: Array  # exercise-driven hepatic glucose production [mg/kg/min]
    gly_liv: Array  # liver glycogen, fraction of full stores [-]
    gly_mus: Array  # muscle glycogen, fraction of full stores [-]
    # --- myokines [M9]
    il6_mus: Array  # muscle IL-6 production drive (transcription), [-] (0 at rest)
    il6: Array  # plasma IL-6 [pg/mL]
    glp1: Array  # GLP-1, fold of basal [-]
    irisin: Array  # irisin/FNDC5, fold of sedentary basal [-]
    fgf21: Array  # FGF21, fold of basal [-]
    bdnf: Array  # BDNF, fold of basal [-]
    myostatin: Array  # myostatin, fold of sedentary basal [-]
    # --- long-term adaptation [M10, M11, M12, M5]
    pgc1a: Array  # PGC-1alpha, fold of basal [-]
    mito: Array  # mitochondrial density, relative to a sedentary healthy reference [-]
    lipid: Array  # DAG/ceramide content, relative to a healthy reference [-]
    infl: Array  # chronic low-grade inflammatory tone, relative [-]
    mem: Array  # distal-convergence memory: primed TBC1D4 after AMPK activity, fraction [-]
    # --- clamp controller
    clamp_int: Array  # integral of the clamp error (target - G) [mg/dL*min]


STATE_UNITS: dict[str, str] = {
    "vo2": "1", "ampk": "1", "tbc1d1_p": "1", "ins": "mU/L", "ins_int": "mU/L", "ins_liv": "mU/L", "akt": "1",
    "as160": "1", "glut4_pm": "1", "glut4_in": "1", "gp": "mg/kg", "gt": "mg/kg", "egp_ex": "mg/kg/min",
    "gly_liv": "1", "gly_mus": "1", "il6_mus": "1", "il6": "pg/mL", "glp1": "1", "irisin": "1", "fgf21": "1",
    "bdnf": "1", "myostatin": "1", "pgc1a": "1", "mito": "1", "lipid": "1", "infl": "1", "mem": "1",
    "clamp_int": "mg/dL*min",
}
STATE_NAMES: tuple[str, ...] = tuple(STATE_UNITS)

#: Sub-systems. Without exercise every state outside CORE_STATES stays exactly at its basal value (each of their
#: balances is zero at rest whatever glucose and insulin do), so protocols without exercise integrate only the core:
#: the same equations, a far smaller implicit system (``simulate.active_states``; tested against the full solve).
CORE_STATES: tuple[str, ...] = ("ins_int", "ins_liv", "akt", "as160", "glut4_pm", "glut4_in", "gp", "gt")
INSULIN_KINETIC_STATES: tuple[str, ...] = ("ins",)
CLAMP_STATES: tuple[str, ...] = ("clamp_int",)
EXERCISE_STATES: tuple[str, ...] = tuple(
    s for s in STATE_NAMES if s not in CORE_STATES + INSULIN_KINETIC_STATES + CLAMP_STATES
)

#: Every parameter of the equations (the ``parameterId`` column of parameters.tsv), with its unit.
PARAMETER_UNITS: dict[str, str] = {
    # [M1] exercise input
    "tau_vo2": "min",
    # [M2] AMPK
    "k_ampk_on": "1/min", "k_ampk_off": "1/min", "ampk_basal_drive": "1", "ampk_ec50": "1", "ampk_hill": "1",
    # [M3] insulin-independent translocation
    "k_tbc_on": "1/min", "k_tbc_off": "1/min", "w_tbc_ampk": "1",
    # [M8] insulin kinetics
    "ib": "mU/L", "v_ins": "L/kg", "n_ins": "1/min", "cl_ex": "1", "sec_glc_power": "1", "sec_ex_supp": "1",
    "e_glp1_sec": "1", "k_ins_int": "1/min", "k_ins_liv": "1/min",
    # [M4] insulin signalling
    "k_akt_on": "1/min", "k_akt_off": "1/min", "akt_ec50": "mU/L", "akt_hill": "1", "k_as160_on": "1/min",
    "k_as160_off": "1/min",
    # [M5] distal-convergence memory
    "k_mem_on": "1/min", "tau_mem": "min", "mem_prime": "1",
    # [M6] GLUT4 traffic and muscle disposal
    "k_exo_basal": "1/min", "k_exo_ins": "1/min", "k_exo_ex": "1/min", "k_endo": "1/min", "vmax_muscle": "mg/kg/min",
    "km_muscle": "mg/kg", "glut4_capacity": "1", "glut4_mito_power": "1",
    # [M7] whole-body glucose
    "gb": "mg/dL", "v_g": "dL/kg", "k1": "1/min", "k2": "1/min", "u_cns": "mg/kg/min", "km_cns": "mg/kg",
    "k_other": "1/min", "s_other_ins": "1", "k_other_ec50": "mU/L", "k_egp_ins": "mU/L", "egp_glc_power": "1",
    "ke_renal": "1/min", "ke_threshold": "mg/kg", "q_egp_ex": "mg/kg/min", "tau_egp_ex": "min", "c_liv": "mg/kg",
    "k_gly_liv_refill": "1/min", "km_gly_liv": "1", "k_gly_mus_use": "1/min", "k_gly_mus_refill": "1/min",
    "r_wb": "1",
    # [M9] myokines
    "il6_basal": "pg/mL", "t_half_il6": "min", "k_il6_prod": "1/min", "k_il6_off": "1/min", "il6_threshold": "1",
    "r_il6": "pg/mL/min", "g_il6_glycogen": "1", "e_il6_ins": "1", "e_il6_egp": "1", "e_il6_fox": "1",
    "k_il6_sat": "1", "c_il6_glp1": "1", "k_glp1": "1/min", "k_irisin": "1/min", "c_irisin_ex": "1",
    "e_irisin_ffa": "1", "k_fgf21": "1/min", "c_fgf21_ex": "1", "e_fgf21": "1", "k_bdnf": "1/min",
    "c_bdnf_ex": "1", "e_bdnf_fox": "1", "k_myostatin": "1/min", "c_myostatin_ex": "1", "e_myostatin": "1",
    # [M10] mitochondrial biogenesis
    "k_pgc1a": "1/min", "c_pgc1a_ampk": "1", "c_pgc1a_p38": "1", "k_mito": "1/min", "mito_set": "1",
    # [M11] lipid intermediates
    "k_lipid": "1/min", "ffa_supply": "mg/kg/min", "v_fox": "mg/kg/min", "v_lipid_store": "mg/kg/min", "ffa_mito_power": "1", "c_fox_ex": "1",
    "lipid_k_inh": "1",
    # [M12] inflammation
    "k_infl": "1/min", "infl_drive": "1", "c_infl_lipid": "1", "e_antiinfl": "1", "infl_k_inh": "1",
    # clamp controller (Katz 2000 / DeFronzo 1979 variable glucose infusion, modelled as a PI controller)
    "clamp_kp": "mg/kg/min per mg/dL", "clamp_ki": "mg/kg/min per mg/dL/min",
}
PARAMETER_NAMES: tuple[str, ...] = tuple(PARAMETER_UNITS)

#: Parameters that act only through the insulin kinetics (``d_ins`` and the kinetic basal insulin). With measured
#: insulin as forcing they have no effect at all (tested), so a fit whose every condition is forced leaves them at
#: their nominal values instead of sampling their priors.
INSULIN_KINETIC_PARAMS: tuple[str, ...] = (
    "ib", "v_ins", "n_ins", "cl_ex", "sec_glc_power", "sec_ex_supp", "e_glp1_sec",
)

Params = dict[str, Array]


def hill(x: Array, k: Array, n: Array) -> Array:
    """Hill activation x^n / (k^n + x^n) for x >= 0 [-]; safe at x = 0 for gradients."""
    x = jnp.maximum(x, 0.0)
    xn = jnp.where(x > 0, x, 1.0) ** n
    xn = jnp.where(x > 0, xn, 0.0)
    return xn / (k**n + xn)


def softplus_k(x: Array, k: float = 5.0) -> Array:
    """Smooth max(x, 0) with sharpness k (units of x): used where a flux cannot be negative."""
    return jnp.logaddexp(k * x, 0.0) / k


def saturating(x: Array, k: Array) -> Array:
    """x / (x + k) for x >= -k/2: bounded myokine effect of a fold change x above basal [-]."""
    x = jnp.maximum(x, 0.0)
    return x / (x + k)


class Fluxes(eqx.Module):
    """Every flux and algebraic quantity of the model at one time (also the observables' ingredients)."""

    glucose: Array  # plasma glucose concentration [mg/dL]
    insulin: Array  # plasma insulin driving the model (kinetic or forced) [mU/L]
    u_muscle: Array  # skeletal-muscle glucose uptake [mg/kg/min]
    u_cns: Array  # insulin-independent (brain, red cells) uptake [mg/kg/min]
    u_other: Array  # other insulin-dependent uptake (adipose, splanchnic) [mg/kg/min]
    renal: Array  # renal glucose excretion [mg/kg/min]
    egp: Array  # endogenous glucose production [mg/kg/min]
    gir: Array  # glucose infusion rate (clamp controller or protocol) [mg/kg/min]
    rd: Array  # total glucose disappearance [mg/kg/min]
    sig_efficiency: Array  # insulin-signalling efficiency (lipids, inflammation, myokines) [-]
    fat_ox: Array  # muscle fat oxidation, relative units [-]
    fat_share: Array  # fat share of muscle fuel (fat oxidation over fat + glucose) [-]
    ampk_fold: Array  # AMPK activity, fold of rest [-]
    ffa_in: Array  # fatty-acid supply to muscle [mg/kg/min glucose-energy equivalent]


def basal_ampk(p: Params) -> Array:
    """AMPK active fraction at rest [-] (steady state of the AMPK balance with zero exercise)."""
    on = p["k_ampk_on"] * p["ampk_basal_drive"]
    return on / (on + p["k_ampk_off"])


def fluxes(y: State, p: Params, inp: Inputs, cov: dict[str, Array]) -> Fluxes:
    """Algebraic fluxes for state ``y`` under protocol inputs ``inp``; ``cov`` holds derived basal constants."""
    glucose = y.gp / p["v_g"]  # [mg/dL]  [@DallaMan2007]
    insulin = jnp.where(inp.insulin_forced, inp.insulin_measured, y.ins)  # [mU/L] measured forcing or kinetics
    ampk_b = basal_ampk(p)

    # [M12][M11][M9] insulin-signalling efficiency: lipid and inflammatory inhibition, myokine help
    lipid_inh = 1.0 / (1.0 + y.lipid / p["lipid_k_inh"])  # [-]  DAG/ceramide block IRS/Akt  [@Samuel2012]
    infl_inh = 1.0 / (1.0 + y.infl / p["infl_k_inh"])  # [-]  inflammatory tone blocks IRS1  [@Hotamisligil2006]
    il6_x = y.il6 / p["il6_basal"] - 1.0  # [-] IL-6 fold above basal
    il6_help = 1.0 + p["e_il6_ins"] * saturating(il6_x, p["k_il6_sat"])  # [-]  [@Carey2006]
    fgf21_help = 1.0 + p["e_fgf21"] * (y.fgf21 - 1.0)  # [-]  [@Fisher2016]
    myo_help = 1.0 + p["e_myostatin"] * (1.0 - y.myostatin)  # [-] lower myostatin helps signalling  [@Guo2009]
    sig_eff = lipid_inh * infl_inh * il6_help * myo_help  # [-]

    # [M6] muscle glucose disposal through membrane GLUT4 (Michaelis-Menten)  [@DallaMan2007; @Richter2013]
    # total GLUT4 content rises with oxidative capacity (PGC-1alpha co-activates GLUT4 expression)  [@Michael2001]
    glut4_total = p["glut4_capacity"] * y.mito ** p["glut4_mito_power"]  # [-] relative to healthy sedentary
    u_muscle = p["vmax_muscle"] * glut4_total * y.glut4_pm * y.gt / (p["km_muscle"] + y.gt)  # [mg/kg/min]
    # [M7] other sinks
    u_cns = p["u_cns"] * y.gp / (p["km_cns"] + y.gp)  # [mg/kg/min] brain + RBC, insulin independent  [@DallaMan2007]
    ins_other = y.ins_int / (y.ins_int + p["k_other_ec50"])  # [-] adipose/splanchnic insulin action
    u_other = p["k_other"] * (1.0 + p["s_other_ins"] * ins_other * fgf21_help) * y.gp  # [mg/kg/min]  [@Nyman2011]
    renal = p["ke_renal"] * softplus_k(y.gp - p["ke_threshold"], 0.05)  # [mg/kg/min]  [@DallaMan2007]
    # [M7][M9] endogenous glucose production: insulin suppression, glucose autoregulation, exercise, IL-6 (sign free)
    egp_ins = 1.0 / (1.0 + y.ins_liv / p["k_egp_ins"])  # [-]  [@Conte2012]
    egp_glc = (p["gb"] / jnp.maximum(glucose, 1.0)) ** p["egp_glc_power"]  # [-]  [@DallaMan2007]
    egp_il6 = jnp.exp(p["e_il6_egp"] * saturating(il6_x, p["k_il6_sat"]))  # [-]  [@Febbraio2004]
    egp = (cov["egp_b0"] * egp_ins * egp_glc / (fgf21_help) + y.egp_ex) * egp_il6  # [mg/kg/min]  [@Deichmann2023]
    # clamp controller: PI on the glucose error, smooth non-negativity  [@DeFronzo1979]
    target = jnp.where(inp.clamp_target_basal > 0.5, p["gb"], inp.clamp_target_mgdl)  # [mg/dL]
    err = target - glucose
    gir_clamp = softplus_k(p["clamp_kp"] * err + p["clamp_ki"] * y.clamp_int, 20.0)  # [mg/kg/min]
    gir = inp.glucose_infusion + inp.clamp_active * gir_clamp  # [mg/kg/min]
    rd = u_muscle + u_cns + u_other + renal  # [mg/kg/min]

    # [M10][M11] fuel selection in resting muscle (relative units)
    ffa_in = p["ffa_supply"] * (1.0 - p["e_irisin_ffa"] * (y.irisin - 1.0)) * y.mito ** p["ffa_mito_power"]
    fox_cap = y.mito * (1.0 + p["e_bdnf_fox"] * (y.bdnf - 1.0) + p["e_il6_fox"] * saturating(il6_x, p["k_il6_sat"]))
    fat_ox = p["v_fox"] * fox_cap * (1.0 + p["c_fox_ex"] * y.vo2) * y.lipid  # [mg/kg/min equiv.]  [@Goodpaster2001]
    # resting glucose oxidation, restrained by fat oxidation (glucose-fatty acid cycle)  [@Randle1963]
    glc_ox = u_muscle / (1.0 + fat_ox / p["v_fox"])  # [mg/kg/min]
    fat_share = fat_ox / (fat_ox + glc_ox)  # [-] share of muscle fuel from fat  [@Kelley1999]

    return Fluxes(
        glucose=glucose, insulin=insulin, u_muscle=u_muscle, u_cns=u_cns, u_other=u_other, renal=renal, egp=egp,
        gir=gir, rd=rd, sig_efficiency=sig_eff, fat_ox=fat_ox, fat_share=fat_share,
        ampk_fold=y.ampk / ampk_b, ffa_in=ffa_in,
    )


def vector_field(t: Array, y: State, args) -> State:
    """dy/dt of every state. ``args = (params, inputs, covariates)``."""
    p, u, cov = args
    inp = u.at(t)
    f = fluxes(y, p, inp, cov)
    ampk_b = basal_ampk(p)
    ampk_x = (y.ampk - ampk_b) / (1.0 - ampk_b)  # [-] AMPK activation above rest, 0..1

    # [M1] exercise: VO2 follows the intensity schedule with a 1-2 min time constant  [@RoyParker2007]
    d_vo2 = (inp.exercise - y.vo2) / p["tau_vo2"]  # [1/min]
    # [M2] AMPK: threshold-like (Hill) in intensity, off within ~3 h  [@Wojtaszewski2000; @Chen2003]
    drive = p["ampk_basal_drive"] + hill(y.vo2, p["ampk_ec50"], p["ampk_hill"])  # [-]
    d_ampk = p["k_ampk_on"] * drive * (1.0 - y.ampk) - p["k_ampk_off"] * y.ampk  # [1/min]
    # [M3] contraction (Ca2+, proportional to VO2) and AMPK phosphorylate TBC1D1/4; decays over 1-2 h  [@Treebak2014]
    s_ex = p["w_tbc_ampk"] * jnp.maximum(ampk_x, 0.0) + (1.0 - p["w_tbc_ampk"]) * y.vo2  # [-]
    d_tbc = p["k_tbc_on"] * s_ex * (1.0 - y.tbc1d1_p) - p["k_tbc_off"] * y.tbc1d1_p  # [1/min]

    # [M8] insulin kinetics: infusion, glucose-stimulated secretion potentiated by GLP-1, clearance up with exercise
    sec_b = p["n_ins"] * p["ib"]  # [mU/L/min] basal secretion balancing basal clearance  [@DallaMan2007]
    sec = (
        sec_b
        * (jnp.maximum(f.glucose, 1.0) / p["gb"]) ** p["sec_glc_power"]  # [-] glucose stimulation  [@Toffolo1995]
        * (1.0 + p["e_glp1_sec"] * (y.glp1 - 1.0))  # [-] incretin potentiation  [@Ellingsgaard2011]
        * (1.0 - p["sec_ex_supp"] * y.vo2)  # [-] catecholamine suppression during exercise  [@RoyParker2007]
    )  # [mU/L/min]
    clear = p["n_ins"] * (1.0 + p["cl_ex"] * y.vo2) * y.ins  # [mU/L/min]  [@RoyParker2007]
    infusion = inp.insulin_infusion / p["v_ins"]  # [mU/L/min] (mU/kg/min over L/kg)
    d_ins = jnp.where(inp.insulin_forced > 0.5, 0.0, infusion + sec - clear)  # [mU/L/min] (held when forced)
    d_ins_int = p["k_ins_int"] * (f.insulin - y.ins_int)  # [mU/L/min] remote insulin  [@Bergman1981]
    d_ins_liv = p["k_ins_liv"] * (f.insulin - y.ins_liv)  # [mU/L/min]  [@DallaMan2007]

    # [M4] insulin -> Akt -> AS160/TBC1D4, inhibited by lipids and inflammation  [@Brannmark2013; @Sedaghat2002]
    # [M5] distal convergence: AMPK-primed TBC1D4 left-shifts the insulin dose-response of the Akt -> AS160 arm
    # (a lower insulin EC50: sensitivity, not maximal responsiveness; lumped into the arm's EC50)
    prime = 1.0 + p["mem_prime"] * y.mem  # [-]  [@Treebak2009; @Kjobsted2017]
    ins_drive = hill(y.ins_int, p["akt_ec50"] / prime, p["akt_hill"]) * f.sig_efficiency  # [-]
    d_akt = p["k_akt_on"] * ins_drive * (1.0 - y.akt) - p["k_akt_off"] * y.akt  # [1/min]
    d_as160 = p["k_as160_on"] * y.akt * (1.0 - y.as160) - p["k_as160_off"] * y.as160  # [1/min]
    d_mem = p["k_mem_on"] * jnp.maximum(ampk_x, 0.0) * (1.0 - y.mem) - y.mem / p["tau_mem"]  # [1/min]  [@Mikines1988]

    # [M3][M4][M6] GLUT4 translocation: basal + insulin (AS160) + contraction (TBC1D1) exocytosis; endocytosis
    k_exo = p["k_exo_basal"] + p["k_exo_ins"] * y.as160 + p["k_exo_ex"] * y.tbc1d1_p  # [1/min]  [@Sedaghat2002]
    exo = k_exo * y.glut4_in  # [1/min]
    endo = p["k_endo"] * y.glut4_pm  # [1/min]
    d_glut4_pm = exo - endo
    d_glut4_in = endo - exo

    # [M7] glucose: plasma <-> tissue, sinks, production and infusion  [@DallaMan2007; @Deichmann2023]
    d_gp = f.egp + f.gir - f.u_cns - f.u_other - f.renal - p["k1"] * y.gp + p["k2"] * y.gt  # [mg/kg/min]
    d_gt = p["k1"] * y.gp - p["k2"] * y.gt - f.u_muscle  # [mg/kg/min]
    liver_ok = y.gly_liv / (y.gly_liv + p["km_gly_liv"]) * (1.0 + p["km_gly_liv"])  # [-] glycogen limits egp_ex
    d_egp_ex = (p["q_egp_ex"] * y.vo2 * liver_ok - y.egp_ex) / p["tau_egp_ex"]  # [mg/kg/min^2]  [@RoyParker2007]
    d_gly_liv = -y.egp_ex / p["c_liv"] + p["k_gly_liv_refill"] * (1.0 - y.gly_liv)  # [1/min]  [@Deichmann2023]
    d_gly_mus = -p["k_gly_mus_use"] * y.vo2**2 + p["k_gly_mus_refill"] * (1.0 - y.gly_mus)  # [1/min]  [@Gollnick1974]

    # [M9] myokines
    # [-] intensity above the IL-6 threshold; the constant makes it exactly 0 at rest (no leak at the basal state)
    ex_above = softplus_k(y.vo2 - p["il6_threshold"], 50.0) - softplus_k(-p["il6_threshold"], 50.0)
    low_gly = 1.0 + p["g_il6_glycogen"] * (1.0 - y.gly_mus)  # [-] more IL-6 when glycogen is low  [@Keller2001]
    d_il6_mus = p["k_il6_prod"] * ex_above * low_gly - p["k_il6_off"] * y.il6_mus  # [1/min]  [@Steensberg2000]
    k_el = LN2 / p["t_half_il6"]  # [1/min] plasma half-life ~1 h  [@Ostrowski1998]
    d_il6 = p["r_il6"] * y.il6_mus - k_el * (y.il6 - p["il6_basal"])  # [pg/mL/min]  [@Morettini2017]
    il6_x = y.il6 / p["il6_basal"] - 1.0
    d_glp1 = p["k_glp1"] * (1.0 + p["c_il6_glp1"] * saturating(il6_x, p["k_il6_sat"]) - y.glp1)  # [@Ellingsgaard2011]
    d_irisin = p["k_irisin"] * (y.pgc1a * (1.0 + p["c_irisin_ex"] * y.vo2) - y.irisin)  # [1/min]  [@Bostrom2012]
    d_fgf21 = p["k_fgf21"] * (1.0 + p["c_fgf21_ex"] * y.vo2 - y.fgf21)  # [1/min]  [@Kim2013]
    d_bdnf = p["k_bdnf"] * (1.0 + p["c_bdnf_ex"] * y.vo2 - y.bdnf)  # [1/min]  [@Matthews2009]
    d_myostatin = p["k_myostatin"] * (1.0 / (1.0 + p["c_myostatin_ex"] * jnp.maximum(ampk_x, 0.0)) - y.myostatin)

    # [M10] AMPK/p38 -> PGC-1alpha -> mitochondrial density over days to weeks  [@Handschin2008; @Egan2013]
    pgc_target = 1.0 + p["c_pgc1a_ampk"] * jnp.maximum(ampk_x, 0.0) + p["c_pgc1a_p38"] * y.vo2
    d_pgc1a = p["k_pgc1a"] * (pgc_target - y.pgc1a)  # [1/min]
    d_mito = p["k_mito"] * (p["mito_set"] * y.pgc1a - y.mito)  # [1/min]  [@Holloszy1967]
    # [M11] DAG/ceramide: fatty-acid supply minus oxidation  [@Samuel2012; @Goodpaster2001]
    # fatty acids not oxidised are esterified into inert storage (IMTG) at a rate proportional to DAG/ceramide
    lipid_store = p["v_lipid_store"] * y.lipid  # [mg/kg/min equiv.]  [@Goodpaster2001]
    d_lipid = p["k_lipid"] * (f.ffa_in - f.fat_ox - lipid_store) / p["v_fox"]  # [1/min]
    # [M12] inflammation: driven by lipid overload, resolved by muscle-derived anti-inflammatory myokines
    antiinfl = p["e_antiinfl"] * saturating(il6_x, p["k_il6_sat"])  # [-]  [@Petersen2005]
    d_infl = p["k_infl"] * (p["infl_drive"] * (1.0 + p["c_infl_lipid"] * y.lipid) * (1.0 - antiinfl) - y.infl)

    # clamp controller integral (only while a clamp runs)
    target = jnp.where(inp.clamp_target_basal > 0.5, p["gb"], inp.clamp_target_mgdl)  # [mg/dL]
    d_clamp_int = inp.clamp_active * (target - f.glucose)  # [mg/dL]

    return State(
        vo2=d_vo2, ampk=d_ampk, tbc1d1_p=d_tbc, ins=d_ins, ins_int=d_ins_int, ins_liv=d_ins_liv, akt=d_akt,
        as160=d_as160, glut4_pm=d_glut4_pm, glut4_in=d_glut4_in, gp=d_gp, gt=d_gt, egp_ex=d_egp_ex,
        gly_liv=d_gly_liv, gly_mus=d_gly_mus, il6_mus=d_il6_mus, il6=d_il6, glp1=d_glp1, irisin=d_irisin,
        fgf21=d_fgf21, bdnf=d_bdnf, myostatin=d_myostatin, pgc1a=d_pgc1a, mito=d_mito, lipid=d_lipid, infl=d_infl,
        mem=d_mem, clamp_int=d_clamp_int,
    )
