"""The basal fasting state: the steady state of the model for a subject's parameters, computed, not guessed.

At rest every input is zero, so the balances of ``equations.vector_field`` can be solved in dependency order in closed
form (each state is first order in itself given the states upstream). The only loop, glucose <-> insulin secretion, is
closed by construction: the basal plasma glucose ``gb`` and insulin ``ib`` are subject parameters, and the basal
endogenous glucose production ``egp_b0`` and the basal secretion are the values that make them a steady state
(as in Dalla Man et al. 2007). ``tests/test_equations.py`` checks that ``vector_field`` vanishes at this state and that a
Newton solve of ``vector_field = 0`` started elsewhere converges to it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from .equations import Params, State, basal_ampk, fluxes, hill
from .protocol import InputArrays


def basal_state(p: Params, u: InputArrays) -> tuple[State, dict[str, Array]]:
    """Return (basal state, derived constants ``cov``) for parameters ``p`` and the subject's inputs ``u``.

    With measured insulin as forcing the basal insulin is the first measured value; otherwise ``p["ib"]``.
    """
    z = jnp.zeros_like(p["gb"])
    ib = jnp.where(u.insulin_forced > 0.5, u.ins_v[0], p["ib"])  # [mU/L]
    ampk = basal_ampk(p)
    mito = p["mito_set"] * 1.0  # pgc1a = 1 at rest
    # lipid: ffa_supply * mito^a = (v_fox * mito + v_lipid_store) * lipid  (irisin = bdnf = 1, IL-6 basal, rest)
    lipid = p["ffa_supply"] * mito ** p["ffa_mito_power"] / (p["v_fox"] * mito + p["v_lipid_store"])
    infl = p["infl_drive"] * (1.0 + p["c_infl_lipid"] * lipid)
    sig = 1.0 / (1.0 + lipid / p["lipid_k_inh"]) / (1.0 + infl / p["infl_k_inh"])
    a_on = p["k_akt_on"] * hill(ib, p["akt_ec50"], p["akt_hill"]) * sig
    akt = a_on / (a_on + p["k_akt_off"])
    s_on = p["k_as160_on"] * akt
    as160 = s_on / (s_on + p["k_as160_off"])
    k_exo = p["k_exo_basal"] + p["k_exo_ins"] * as160
    glut4_pm = k_exo / (k_exo + p["k_endo"])
    gp = p["gb"] * p["v_g"]  # [mg/kg]
    # tissue glucose: k1*gp - k2*gt = V*gt/(Km + gt)  ->  k2 gt^2 + (k2 Km + V - a) gt - a Km = 0
    a = p["k1"] * gp
    vmax = p["vmax_muscle"] * p["glut4_capacity"] * mito ** p["glut4_mito_power"] * glut4_pm
    b = p["k2"] * p["km_muscle"] + vmax - a
    gt = (-b + jnp.sqrt(b * b + 4.0 * p["k2"] * a * p["km_muscle"])) / (2.0 * p["k2"])
    y = State(
        vo2=z, ampk=ampk + z, tbc1d1_p=z, ins=ib + z, ins_int=ib + z, ins_liv=ib + z, akt=akt, as160=as160,
        glut4_pm=glut4_pm, glut4_in=1.0 - glut4_pm, gp=gp, gt=gt, egp_ex=z, gly_liv=z + 1.0, gly_mus=z + 1.0,
        il6_mus=z, il6=p["il6_basal"] + z, glp1=z + 1.0, irisin=z + 1.0, fgf21=z + 1.0, bdnf=z + 1.0,
        myostatin=z + 1.0, pgc1a=z + 1.0, mito=mito + z, lipid=lipid + z, infl=infl + z, mem=z, clamp_int=z,
    )
    # basal EGP closes the plasma glucose balance at gb: egp = sinks + k1 gp - k2 gt
    f0 = fluxes(y, p, u.rest(), {"egp_b0": jnp.ones_like(z)})
    sinks = f0.u_cns + f0.u_other + f0.renal + p["k1"] * gp - p["k2"] * gt
    egp_shape = f0.egp  # = egp_b0 * egp_ins * egp_glc (=1) with egp_b0 = 1, no exercise, IL-6 basal
    cov = {"egp_b0": sinks / egp_shape, "ib_eff": ib}
    return y, cov
