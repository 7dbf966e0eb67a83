"""The plain scipy baseline: the same log density as ``core_clamp.stan`` (and NumPyro's model), in numpy, with
``scipy.integrate.solve_ivp`` (BDF or LSODA, finite-difference Jacobians) and finite-difference gradients.

It reads the Stan data dict of ``export.export`` and the unconstrained vector in the Stan program's order
(z_pop, z_mu, log omega, z_grp column-major, log sigma), so the three implementations are compared on identical
inputs. Line for line it mirrors the Stan functions (which mirror ``myoglucose.model.equations``).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.integrate import solve_ivp

from export import q_order

LOG2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _softplus(x, k):
    return np.logaddexp(k * x, 0.0) / k


def _hill(x, k, n):
    if x <= 0:
        return 0.0
    xn = x**n
    return xn / (k**n + xn)


def _normal_lpdf(y, mu, s):
    return -HALF_LOG_2PI - np.log(s) - 0.5 * ((y - mu) / s) ** 2


class ScipyModel:
    def __init__(self, d: dict, method: str = "BDF"):
        self.d = d
        self.method = method
        self.Q = {n: i for i, n in enumerate(q_order())}
        self.slot = np.asarray(d["pop_slot"] + d["grp_slot"], int) - 1
        self.nfev = 0

    # -- parameters --------------------------------------------------------------------------------------------
    def unpack(self, u):
        d = self.d
        PP, PG, G, S = d["PP"], d["PG"], d["G"], d["S"]
        u = np.asarray(u, float)
        i = 0
        z_pop = u[i:i + PP]; i += PP  # noqa: E702
        z_mu = u[i:i + PG]; i += PG  # noqa: E702
        log_omega = u[i:i + PG]; i += PG  # noqa: E702
        z_grp = u[i:i + PG * G].reshape(G, PG).T; i += PG * G  # noqa: E702 (column-major)
        log_sigma = u[i:i + S]
        return z_pop, z_mu, log_omega, z_grp, log_sigma

    def condition_q(self, u):
        d = self.d
        z_pop, z_mu, log_omega, z_grp, _ = self.unpack(u)
        omega = np.exp(log_omega)
        pop = np.empty(d["PP"])
        for p in range(d["PP"]):
            eta = d["pop_scale"][p] * z_pop[p]
            pop[p] = math.exp(math.log(d["pop_loc"][p]) + eta) if d["pop_log"][p] else d["pop_loc"][p] + eta
        grp = np.empty((d["PG"], d["G"]))
        for p in range(d["PG"]):  # centred (z_grp are the group values) or non-centred, as the Stan program
            eta = (d["grp_scale"][p] * z_grp[p] if d["grp_centered"][p]
                   else d["grp_scale"][p] * z_mu[p] + omega[p] * z_grp[p])
            grp[p] = np.exp(math.log(d["grp_loc"][p]) + eta) if d["grp_log"][p] else d["grp_loc"][p] + eta
        qs = []
        for c in range(d["C"]):
            q = np.asarray(d["q_fixed"], float).copy()
            q[self.slot] = np.concatenate([pop, grp[:, d["cond_group"][c] - 1]])
            qs.append(q)
        return qs

    # -- equations ---------------------------------------------------------------------------------------------
    def _consts(self, q):
        Q = self.Q
        mito = q[Q["mito_set"]]
        lipid = q[Q["ffa_supply"]] * mito ** q[Q["ffa_mito_power"]] / (q[Q["v_fox"]] * mito + q[Q["v_lipid_store"]])
        infl = q[Q["infl_drive"]] * (1 + q[Q["c_infl_lipid"]] * lipid)
        sig = 1 / (1 + lipid / q[Q["lipid_k_inh"]]) * (1 / (1 + infl / q[Q["infl_k_inh"]]))
        return mito, sig

    def basal(self, q, ib):
        Q = self.Q
        mito, sig = self._consts(q)
        a_on = q[Q["k_akt_on"]] * _hill(ib, q[Q["akt_ec50"]], q[Q["akt_hill"]]) * sig
        akt = a_on / (a_on + q[Q["k_akt_off"]])
        s_on = q[Q["k_as160_on"]] * akt
        as160 = s_on / (s_on + q[Q["k_as160_off"]])
        k_exo = q[Q["k_exo_basal"]] + q[Q["k_exo_ins"]] * as160
        pm = k_exo / (k_exo + q[Q["k_endo"]])
        gp = q[Q["gb"]] * q[Q["v_g"]]
        a = q[Q["k1"]] * gp
        vmax = q[Q["vmax_muscle"]] * q[Q["glut4_capacity"]] * mito ** q[Q["glut4_mito_power"]] * pm
        b = q[Q["k2"]] * q[Q["km_muscle"]] + vmax - a
        gt = (-b + math.sqrt(b * b + 4 * q[Q["k2"]] * a * q[Q["km_muscle"]])) / (2 * q[Q["k2"]])
        u_cns = q[Q["u_cns"]] * gp / (q[Q["km_cns"]] + gp)
        u_other = q[Q["k_other"]] * (1 + q[Q["s_other_ins"]] * ib / (ib + q[Q["k_other_ec50"]])) * gp
        renal = q[Q["ke_renal"]] * _softplus(gp - q[Q["ke_threshold"]], 0.05)
        sinks = u_cns + u_other + renal + q[Q["k1"]] * gp - q[Q["k2"]] * gt
        shape = 1 / (1 + ib / q[Q["k_egp_ins"]]) * (q[Q["gb"]] / max(gp / q[Q["v_g"]], 1.0)) ** q[Q["egp_glc_power"]]
        return np.array([ib, ib, akt, as160, pm, 1 - pm, gp, gt, 0.0]), sinks / shape

    def rhs(self, t, y, q, egp_b0, kt, kv, seg):
        self.nfev += 1
        Q = self.Q
        mito, sig = self._consts(q)
        ins_int, ins_liv, akt, as160, pm, gin, gp, gt, cint = y
        insulin = np.interp(t, kt, kv)
        glucose = gp / q[Q["v_g"]]
        u_muscle = q[Q["vmax_muscle"]] * q[Q["glut4_capacity"]] * mito ** q[Q["glut4_mito_power"]] * pm * gt / (
            q[Q["km_muscle"]] + gt)
        u_cns = q[Q["u_cns"]] * gp / (q[Q["km_cns"]] + gp)
        u_other = q[Q["k_other"]] * (1 + q[Q["s_other_ins"]] * ins_int / (ins_int + q[Q["k_other_ec50"]])) * gp
        renal = q[Q["ke_renal"]] * _softplus(gp - q[Q["ke_threshold"]], 0.05)
        egp = egp_b0 / (1 + ins_liv / q[Q["k_egp_ins"]]) * (q[Q["gb"]] / max(glucose, 1.0)) ** q[Q["egp_glc_power"]]
        tgt = q[Q["gb"]] if seg[2] > 0.5 else seg[3]
        gir = seg[1] + seg[0] * _softplus(q[Q["clamp_kp"]] * (tgt - glucose) + q[Q["clamp_ki"]] * cint, 20.0)
        drive = _hill(ins_int, q[Q["akt_ec50"]], q[Q["akt_hill"]]) * sig
        k_exo = q[Q["k_exo_basal"]] + q[Q["k_exo_ins"]] * as160
        exo, endo = k_exo * gin, q[Q["k_endo"]] * pm
        return np.array([
            q[Q["k_ins_int"]] * (insulin - ins_int),
            q[Q["k_ins_liv"]] * (insulin - ins_liv),
            q[Q["k_akt_on"]] * drive * (1 - akt) - q[Q["k_akt_off"]] * akt,
            q[Q["k_as160_on"]] * akt * (1 - as160) - q[Q["k_as160_off"]] * as160,
            exo - endo,
            endo - exo,
            egp + gir - u_cns - u_other - renal - q[Q["k1"]] * gp + q[Q["k2"]] * gt,
            q[Q["k1"]] * gp - q[Q["k2"]] * gt - u_muscle,
            seg[0] * (tgt - glucose),
        ])

    def observable(self, code, y, q, egp_b0, inp):
        Q = self.Q
        mito, _ = self._consts(q)
        glucose = y[6] / q[Q["v_g"]]
        if code == 1:
            return glucose
        if code == 2:
            return glucose * q[Q["r_wb"]]
        if code == 8:
            return y[4]
        tgt = q[Q["gb"]] if inp[2] > 0.5 else inp[3]
        gir = inp[1] + inp[0] * _softplus(q[Q["clamp_kp"]] * (tgt - glucose) + q[Q["clamp_ki"]] * y[8], 20.0)
        if code == 3:
            return gir
        u_muscle = q[Q["vmax_muscle"]] * q[Q["glut4_capacity"]] * mito ** q[Q["glut4_mito_power"]] * y[4] * y[7] / (
            q[Q["km_muscle"]] + y[7])
        if code == 7:
            return u_muscle
        egp = egp_b0 / (1 + y[1] / q[Q["k_egp_ins"]]) * (q[Q["gb"]] / max(glucose, 1.0)) ** q[Q["egp_glc_power"]]
        if code == 6:
            return egp
        if code == 5:
            return egp + gir
        u_cns = q[Q["u_cns"]] * y[6] / (q[Q["km_cns"]] + y[6])
        u_other = q[Q["k_other"]] * (1 + q[Q["s_other_ins"]] * y[0] / (y[0] + q[Q["k_other_ec50"]])) * y[6]
        renal = q[Q["ke_renal"]] * _softplus(y[6] - q[Q["ke_threshold"]], 0.05)
        return u_muscle + u_cns + u_other + renal

    # -- solve and density -------------------------------------------------------------------------------------
    def predicted_means(self, u) -> np.ndarray:
        d = self.d
        qs = self.condition_q(u)
        ysol = np.zeros((d["NT"], 9))
        b0s, y0s = [], []
        for c in range(d["C"]):
            kt, kv = np.asarray(d["knot_t"][c]), np.asarray(d["knot_v"][c])
            y, egp_b0 = self.basal(qs[c], kv[0])
            y0s.append(y)
            b0s.append(egp_b0)
            for j in range(d["n_int"][c]):
                s, n = d["sol_start"][c][j] - 1, d["sol_len"][c][j]
                times = np.asarray(d["sol_t"][s:s + n])
                t0 = d["int_start"][c][j]
                sol = solve_ivp(self.rhs, (t0, times[-1]), y, method=self.method, t_eval=times, rtol=d["rtol"],
                                atol=d["atol"], args=(qs[c], egp_b0, kt, kv, np.asarray(d["int_seg"][c][j])))
                if not sol.success:
                    raise RuntimeError(f"solve_ivp failed: {sol.message}")
                ysol[s:s + n] = sol.y.T
                y = sol.y[:, -1]
        mu = np.empty(d["N"])
        for i in range(d["N"]):
            e = d["m_eval"][i] - 1
            c = d["e_cond"][e] - 1
            ye = y0s[c] if d["e_sol"][e] == 0 else ysol[d["e_sol"][e] - 1]
            mu[i] = self.observable(d["m_code"][i], ye, qs[c], b0s[c], d["e_inp"][e])
        return mu

    def log_prob(self, u) -> float:
        """log p(u | y) on the unconstrained scale, with every constant (= Stan's log_prob, = -NumPyro potential)."""
        d = self.d
        z_pop, z_mu, log_omega, z_grp, log_sigma = self.unpack(u)
        omega, sigma = np.exp(log_omega), np.exp(log_sigma)
        lp = float(np.sum(_normal_lpdf(z_pop, 0, 1)) + np.sum(_normal_lpdf(z_mu, 0, 1)))
        lp += float(np.sum(_normal_lpdf(omega, 0, d["grp_spread"] * np.asarray(d["grp_scale"]))) + d["PG"] * LOG2)
        for p in range(d["PG"]):
            lp += float(np.sum(_normal_lpdf(z_grp[p], z_mu[p], omega[p] / d["grp_scale"][p]) if d["grp_centered"][p]
                               else _normal_lpdf(z_grp[p], 0, 1)))
        lp += float(np.sum(_normal_lpdf(sigma, 0, np.asarray(d["sigma_prior"]))) + d["S"] * LOG2)
        lp += float(np.sum(log_omega) + np.sum(log_sigma))  # Jacobian of the exp transforms
        try:
            mu = self.predicted_means(u)
        except RuntimeError:
            return -np.inf
        y = np.asarray(d["y_obs"])
        known = np.asarray(d["known_sd"])
        sg = sigma[np.asarray(d["m_noise"]) - 1]
        kind = np.asarray(d["m_kind"])
        floor = np.asarray(d["noise_floor"])
        s_norm = np.sqrt(sg**2 + known**2)
        s_prop = np.sqrt((sg * np.abs(mu)) ** 2 + floor**2 + known**2)
        s_log = np.sqrt(sg**2 + (known / np.maximum(np.abs(mu), 1e-6)) ** 2)
        ll = np.where(kind == 0, _normal_lpdf(y, mu, s_norm), _normal_lpdf(y, mu, s_prop))
        with np.errstate(divide="ignore", invalid="ignore"):
            logn = _normal_lpdf(np.log(np.where(y > 0, y, 1.0)), np.log(np.maximum(mu, 1e-12)), s_log) - np.log(
                np.where(y > 0, y, 1.0))
        ll = np.where(kind == 2, np.where(y > 0, logn, -np.inf), ll)
        return lp + float(np.sum(ll))

    def fd_gradient(self, u, h: float = 1e-4, central: bool = True) -> np.ndarray:
        u = np.asarray(u, float)
        g = np.empty_like(u)
        f0 = None if central else self.log_prob(u)
        for i in range(u.size):
            e = np.zeros_like(u)
            e[i] = h
            if central:
                g[i] = (self.log_prob(u + e) - self.log_prob(u - e)) / (2 * h)
            else:
                g[i] = (self.log_prob(u + e) - f0) / h
        return g


def time_baseline(d: dict, u, reference_grad=None, repeats: int = 3) -> dict:
    """Forward-solve (one log density) and finite-difference gradient cost of the scipy baseline."""
    out = {}
    for method in ("BDF", "LSODA"):
        m = ScipyModel(d, method=method)
        ts, nf = [], []
        for _ in range(repeats):
            m.nfev = 0
            t0 = time.perf_counter()
            lp = m.log_prob(u)
            ts.append(time.perf_counter() - t0)
            nf.append(m.nfev)
        r = {"log_prob": lp, "log_prob_median_s": float(np.median(ts)), "rhs_evaluations": int(nf[0])}
        for central in (False, True):
            t0 = time.perf_counter()
            g = m.fd_gradient(u, central=central)
            el = time.perf_counter() - t0
            key = "fd_central" if central else "fd_forward"
            r[f"{key}_gradient_s"] = el
            if reference_grad is not None:
                ref = np.asarray(reference_grad)
                r[f"{key}_max_rel_err"] = float(np.max(np.abs(g - ref) / np.maximum(np.abs(ref), 1e-3)))
        out[method] = r
    return out
