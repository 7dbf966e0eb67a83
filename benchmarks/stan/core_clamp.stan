// myoglucose `core` variant under a glucose clamp with measured (forced) insulin, hand-translated to Stan.
//
// Peer of the NumPyro model in src/myoglucose/inference/numpyro_model.py (ModelBuilder): the same non-centred latent
// parameters (z, z_mu, omega, z_grp, sigma), priors, noise models and data; the ODE right-hand side is a hand
// translation of src/myoglucose/model/equations.py (vector_field, fluxes) restricted to the states that move under a
// clamp without exercise with insulin forced by its measured series (simulate.active_states):
//     ins_int ins_liv akt as160 glut4_pm glut4_in gp gt clamp_int
// Every other state is constant at its basal value (basal.basal_state): vo2 = tbc1d1_p = egp_ex = il6_mus = mem = 0,
// gly_liv = gly_mus = glp1 = irisin = fgf21 = bdnf = myostatin = pgc1a = 1, il6 = il6_basal, mito = mito_set, lipid
// and infl at their closed-form basal values. The terms those constants switch off (memory priming, IL-6, FGF21 and
// myostatin effects, exercise GLUT4 exocytosis, exercise EGP) are exactly 1 or 0 and are left out.
//
// Estimated: k_ins_int, akt_ec50, glut4_capacity, gb (each at population or group level, as the data say); these
// are the only parameters that are autodiff variables inside the right-hand side, every other one is data there.
// Data come from benchmarks/stan/export.py. `q` is the vector of model parameters below, in this order (export.py
// reads the order from the next line; keep it one line):
// Q_ORDER: v_g k_ins_int k_ins_liv akt_ec50 akt_hill k_akt_on k_akt_off k_as160_on k_as160_off k_exo_basal k_exo_ins k_endo vmax_muscle km_muscle glut4_capacity glut4_mito_power mito_set u_cns km_cns k_other s_other_ins k_other_ec50 ke_renal ke_threshold k_egp_ins egp_glc_power gb k1 k2 clamp_kp clamp_ki lipid_k_inh infl_k_inh ffa_supply ffa_mito_power v_fox v_lipid_store infl_drive c_infl_lipid r_wb
functions {
  // equations.hill: x^n / (k^n + x^n) for x > 0, 0 otherwise
  real hill_fn(real x, real k, real n) {
    if (x <= 0) {
      return 0;
    }
    real xn = pow(x, n);
    return xn / (pow(k, n) + xn);
  }

  // equations.softplus_k: logaddexp(k x, 0) / k
  real softplus_k(real x, real k) {
    return log1p_exp(k * x) / k;
  }

  // jnp.interp: linear interpolation, flat beyond the end knots
  real interp_lin(real t, data vector kt, data vector kv) {
    int M = num_elements(kt);
    if (t <= kt[1]) {
      return kv[1];
    }
    if (t >= kt[M]) {
      return kv[M];
    }
    int i = 2;
    while (kt[i] <= t) {
      i += 1;
    }
    return kv[i - 1] + (t - kt[i - 1]) / (kt[i] - kt[i - 1]) * (kv[i] - kv[i - 1]);
  }

  // the parameter vector q of one condition: nominal values with the estimated ones put in their slots
  vector merge_q(vector th, data vector qf, data array[] int slot) {
    vector[num_elements(qf)] q = qf;
    for (p in 1:num_elements(slot)) {
      q[slot[p]] = th[p];
    }
    return q;
  }

  // basal lipid, inflammation and insulin-signalling efficiency (constant states; basal.basal_state)
  vector basal_consts(vector q) {
    real mito = q[17];  // mito_set * pgc1a (= 1)
    real lipid = q[34] * pow(mito, q[35]) / (q[36] * mito + q[37]);
    real infl = q[38] * (1 + q[39] * lipid);
    real sig = 1 / (1 + lipid / q[32]) * (1 / (1 + infl / q[33]));
    return [mito, lipid, infl, sig]';
  }

  // d/dt of the nine active states. th = (k_ins_int, akt_ec50, glut4_capacity, gb, egp_b0): the only parameters
  // that vary (the estimated ones and the basal EGP derived from them); everything else is data, written inline so
  // that no autodiff node is made for it. cst = (basal insulin-signalling efficiency, vmax_muscle * mito^power),
  // constants of transformed data. seg = (clamp_active, glucose_infusion, clamp_target_basal, clamp_target_mgdl).
  vector core_rhs(real t, vector y, vector th, data vector qf, data vector cst, data vector kt, data vector kv,
                  data vector seg) {
    real insulin = interp_lin(t, kt, kv);  // forced: measured plasma insulin [mU/L]
    real glucose = y[7] / qf[1];
    real tgt = seg[3] > 0.5 ? th[4] : seg[4];
    real xn = y[1] > 0 ? pow(y[1], qf[5]) : 0;  // hill(ins_int, akt_ec50, akt_hill)
    real exo_minus_endo = (qf[10] + qf[11] * y[4]) * y[6] - qf[12] * y[5];
    vector[9] dy;
    dy[1] = th[1] * (insulin - y[1]);
    dy[2] = qf[3] * (insulin - y[2]);
    dy[3] = qf[6] * (xn / (pow(th[2], qf[5]) + xn)) * cst[1] * (1 - y[3]) - qf[7] * y[3];
    dy[4] = qf[8] * y[3] * (1 - y[4]) - qf[9] * y[4];
    dy[5] = exo_minus_endo;
    dy[6] = -exo_minus_endo;
    dy[7] = th[5] / (1 + y[2] / qf[25]) * pow(th[4] / fmax(glucose, 1.0), qf[26])  // egp
            + seg[2] + seg[1] * softplus_k(qf[30] * (tgt - glucose) + qf[31] * y[9], 20.0)  // gir
            - qf[18] * y[7] / (qf[19] + y[7])  // u_cns
            - qf[20] * (1 + qf[21] * y[1] / (y[1] + qf[22])) * y[7]  // u_other
            - qf[23] * softplus_k(y[7] - qf[24], 0.05)  // renal
            - qf[28] * y[7] + qf[29] * y[8];
    dy[8] = qf[28] * y[7] - qf[29] * y[8] - cst[2] * th[3] * y[5] * y[8] / (qf[14] + y[8]);  // - u_muscle
    dy[9] = seg[1] * (tgt - glucose);
    return dy;
  }

  // basal fasting state (basal.basal_state) of the active states and egp_b0; ib = first measured insulin
  vector core_basal(vector q, real ib) {
    vector[4] bc = basal_consts(q);
    real mito = bc[1];
    real sig = bc[4];
    real a_on = q[6] * hill_fn(ib, q[4], q[5]) * sig;
    real akt = a_on / (a_on + q[7]);
    real s_on = q[8] * akt;
    real as160 = s_on / (s_on + q[9]);
    real k_exo = q[10] + q[11] * as160;
    real glut4_pm = k_exo / (k_exo + q[12]);
    real gp = q[27] * q[1];
    real a = q[28] * gp;
    real vmax = q[13] * q[15] * pow(mito, q[16]) * glut4_pm;
    real b = q[29] * q[14] + vmax - a;
    real gt = (-b + sqrt(b * b + 4 * q[29] * a * q[14])) / (2 * q[29]);
    // basal EGP closes the plasma glucose balance at gb
    real u_cns = q[18] * gp / (q[19] + gp);
    real u_other = q[20] * (1 + q[21] * ib / (ib + q[22])) * gp;
    real renal = q[23] * softplus_k(gp - q[24], 0.05);
    real sinks = u_cns + u_other + renal + q[28] * gp - q[29] * gt;
    real shape = 1 / (1 + ib / q[25]) * pow(q[27] / fmax(gp / q[1], 1.0), q[26]);
    return [ib, ib, akt, as160, glut4_pm, 1 - glut4_pm, gp, gt, 0, sinks / shape]';
  }

  // observables (simulate.observables) at one time; inp = inputs at that time (InputArrays.at, left-continuous)
  // codes: 1 glucose_plasma, 2 glucose_whole_blood, 3 gir, 4 rd, 5 ra, 6 egp, 7 muscle_uptake, 8 glut4_membrane
  real core_observable(int code, vector y, vector q, real egp_b0, data vector inp) {
    vector[4] bc = basal_consts(q);
    real mito = bc[1];
    real glucose = y[7] / q[1];
    if (code == 1) {
      return glucose;
    }
    if (code == 2) {
      return glucose * q[40];
    }
    if (code == 8) {
      return y[5];
    }
    real tgt = inp[3] > 0.5 ? q[27] : inp[4];
    real gir = inp[2] + inp[1] * softplus_k(q[30] * (tgt - glucose) + q[31] * y[9], 20.0);
    if (code == 3) {
      return gir;
    }
    real u_muscle = q[13] * q[15] * pow(mito, q[16]) * y[5] * y[8] / (q[14] + y[8]);
    if (code == 7) {
      return u_muscle;
    }
    real egp = egp_b0 * (1 / (1 + y[2] / q[25])) * pow(q[27] / fmax(glucose, 1.0), q[26]);
    if (code == 6) {
      return egp;
    }
    if (code == 5) {
      return egp + gir;
    }
    real u_cns = q[18] * y[7] / (q[19] + y[7]);
    real u_other = q[20] * (1 + q[21] * y[1] / (y[1] + q[22])) * y[7];
    real renal = q[23] * softplus_k(y[7] - q[24], 0.05);
    return u_muscle + u_cns + u_other + renal;  // code 4: rd
  }

  // predicted means of all measurements for the per-condition estimated parameters th_c [C] (each P values)
  vector predict_means(array[] vector th_c, data vector qf, data array[] int slot, data array[] vector knot_t,
                       data array[] vector knot_v, data array[] int n_int, data array[,] real int_start,
                       data array[,] vector int_seg, data array[] real sol_t, data array[,] int sol_start,
                       data array[,] int sol_len, data array[] int e_cond, data array[] int e_sol,
                       data array[] vector e_inp, data array[] int m_eval, data array[] int m_code,
                       data vector cst, data array[] int rhs_slot, data int ode_solver, data real rtol,
                       data real atol, data int max_steps) {
    int C = size(th_c);
    int E = size(e_cond);
    int N = size(m_eval);
    int P = num_elements(slot);
    array[num_elements(sol_t)] vector[9] ysol;
    array[C] vector[5] th_full;
    array[C] vector[num_elements(qf)] q_c;
    for (c in 1:C) {
      q_c[c] = merge_q(th_c[c], qf, slot);
      vector[10] b = core_basal(q_c[c], knot_v[c][1]);
      th_full[c] = append_row(q_c[c][rhs_slot], b[10]);
      vector[9] y = b[1:9];
      for (j in 1:n_int[c]) {
        int s = sol_start[c, j];
        int n = sol_len[c, j];
        array[n] vector[9] yj;
        if (ode_solver == 1) {
          yj = ode_rk45_tol(core_rhs, y, int_start[c, j], sol_t[s:(s + n - 1)], rtol, atol, max_steps,
                            th_full[c], qf, cst, knot_t[c], knot_v[c], int_seg[c, j]);
        } else {
          yj = ode_bdf_tol(core_rhs, y, int_start[c, j], sol_t[s:(s + n - 1)], rtol, atol, max_steps,
                           th_full[c], qf, cst, knot_t[c], knot_v[c], int_seg[c, j]);
        }
        for (k in 1:n) {
          ysol[s + k - 1] = yj[k];
        }
        y = yj[n];
      }
    }
    vector[N] mu;
    for (i in 1:N) {
      int e = m_eval[i];
      int c = e_cond[e];
      vector[9] ye;
      if (e_sol[e] == 0) {  // at or before t = 0: the basal state
        vector[10] b = core_basal(q_c[c], knot_v[c][1]);
        ye = b[1:9];
      } else {
        ye = ysol[e_sol[e]];
      }
      mu[i] = core_observable(m_code[i], ye, q_c[c], th_full[c][5], e_inp[e]);
    }
    return mu;
  }
}
data {
  int<lower=1> C;  // conditions
  int<lower=1> G;  // groups
  array[C] int<lower=1, upper=G> cond_group;
  int<lower=1> NQ;  // model parameters in q (Q_ORDER)
  vector[NQ] q_fixed;  // nominal values (the estimated slots are overwritten)
  // estimated parameters: population level (including group-level ones when G == 1), then group level
  int<lower=0> PP;
  array[PP] int<lower=1, upper=NQ> pop_slot;
  array[PP] int<lower=0, upper=1> pop_log;  // 1: lognormal prior (log theta = log loc + scale z), 0: normal
  vector[PP] pop_loc;
  vector<lower=0>[PP] pop_scale;
  int<lower=0> PG;
  array[PG] int<lower=1, upper=NQ> grp_slot;
  array[PG] int<lower=0, upper=1> grp_log;
  vector[PG] grp_loc;
  vector<lower=0>[PG] grp_scale;
  array[PG] int<lower=0, upper=1> grp_centered;  // 1: z_grp are the group values (hierarchy: centered)
  real<lower=0> grp_spread;  // omega ~ HalfNormal(grp_spread * grp_scale) (numpyro_model.GROUP_SPREAD_PRIOR)
  // noise scales (one per noise parameter) and their half-normal prior scales
  int<lower=1> S;
  vector<lower=0>[S] sigma_prior;
  // forced insulin: measured knots per condition (padded as in myoglucose: flat extension)
  int<lower=1> M;
  array[C] vector[M] knot_t;
  array[C] vector[M] knot_v;
  // integration intervals per condition (protocol segments, optionally split at the insulin knots)
  int<lower=1> J;
  array[C] int<lower=1, upper=J> n_int;
  array[C, J] real int_start;
  array[C, J] vector[4] int_seg;  // clamp_active, glucose_infusion, clamp_target_basal, clamp_target_mgdl
  // output times of each interval (flat; the last one of an interval is its end)
  int<lower=1> NT;
  array[NT] real sol_t;
  array[C, J] int<lower=0> sol_start;
  array[C, J] int<lower=0> sol_len;
  // evaluation points: (condition, time) -> solution index (0: basal state) and the inputs at that time
  int<lower=1> E;
  array[E] int<lower=1, upper=C> e_cond;
  array[E] int<lower=0, upper=NT> e_sol;
  array[E] vector[4] e_inp;
  // measurements
  int<lower=1> N;
  array[N] int<lower=1, upper=E> m_eval;
  array[N] int<lower=1, upper=8> m_code;  // observable code (core_observable)
  array[N] int<lower=1, upper=S> m_noise;  // noise parameter index
  array[N] int<lower=0, upper=2> m_kind;  // 0 normal, 1 proportional, 2 lognormal
  vector[N] y_obs;
  vector<lower=0>[N] known_sd;
  vector<lower=0>[N] noise_floor;  // floor of the proportional sd (per observable)
  // solver
  real<lower=0> rtol;
  real<lower=0> atol;
  int<lower=1> max_steps;
  int<lower=0, upper=1> ode_solver;  // 0: ode_bdf_tol (CVODES BDF), 1: ode_rk45_tol (Dormand-Prince, non-stiff)
  int<lower=0, upper=1> gq_mu;  // 1: write the predicted means in generated quantities (validation)
}
transformed data {
  array[PP + PG] int slot = append_array(pop_slot, grp_slot);
  // the parameters that vary inside the right-hand side (all others are data there): k_ins_int akt_ec50
  // glut4_capacity gb; export.py checks that exactly these are estimated
  array[4] int rhs_slot = {2, 4, 15, 27};
  vector[2] cst;
  {
    vector[4] bc = basal_consts(q_fixed);
    cst = [bc[4], q_fixed[13] * pow(bc[1], q_fixed[16])]';
  }
}
parameters {
  vector[PP] z_pop;
  vector[PG] z_mu;
  vector<lower=0>[PG] omega;
  matrix[PG, G] z_grp;
  vector<lower=0>[S] sigma;
}
model {
  array[C] vector[PP + PG] th_c;
  {
    vector[PP] pop_val;
    matrix[PG, G] grp_val;
    for (p in 1:PP) {
      real eta = pop_scale[p] * z_pop[p];
      pop_val[p] = pop_log[p] ? exp(log(pop_loc[p]) + eta) : pop_loc[p] + eta;
    }
    for (p in 1:PG) {
      for (g in 1:G) {
        real eta = grp_centered[p] ? grp_scale[p] * z_grp[p, g] : grp_scale[p] * z_mu[p] + omega[p] * z_grp[p, g];
        grp_val[p, g] = grp_log[p] ? exp(log(grp_loc[p]) + eta) : grp_loc[p] + eta;
      }
    }
    for (c in 1:C) {
      th_c[c] = append_row(pop_val, grp_val[:, cond_group[c]]);
    }
  }
  vector[N] mu = predict_means(th_c, q_fixed, slot, knot_t, knot_v, n_int, int_start, int_seg, sol_t, sol_start,
                               sol_len, e_cond, e_sol, e_inp, m_eval, m_code, cst, rhs_slot, ode_solver, rtol, atol,
                               max_steps);
  // priors, with every constant (so that log_prob equals minus NumPyro's potential energy)
  target += std_normal_lpdf(z_pop);
  target += std_normal_lpdf(z_mu);
  target += normal_lpdf(omega | 0, grp_spread * grp_scale) + PG * log(2);
  for (p in 1:PG) {
    if (grp_centered[p]) {
      target += normal_lpdf(z_grp[p] | z_mu[p], omega[p] / grp_scale[p]);
    } else {
      target += std_normal_lpdf(z_grp[p]);
    }
  }
  target += normal_lpdf(sigma | 0, sigma_prior) + S * log(2);
  // observation model (numpyro_model.ModelBuilder.observation)
  for (i in 1:N) {
    real sg = sigma[m_noise[i]];
    if (m_kind[i] == 0) {
      target += normal_lpdf(y_obs[i] | mu[i], sqrt(square(sg) + square(known_sd[i])));
    } else if (m_kind[i] == 1) {
      target += normal_lpdf(y_obs[i] | mu[i],
                            sqrt(square(sg * abs(mu[i])) + square(noise_floor[i]) + square(known_sd[i])));
    } else {
      if (y_obs[i] <= 0) {
        target += negative_infinity();
      } else {
        target += lognormal_lpdf(y_obs[i] | log(fmax(mu[i], 1e-12)),
                                 sqrt(square(sg) + square(known_sd[i] / fmax(abs(mu[i]), 1e-6))));
      }
    }
  }
}
generated quantities {
  vector[PP] pop_val;
  matrix[PG, G] grp_val;
  vector[gq_mu ? N : 0] mu_gq;
  for (p in 1:PP) {
    real eta = pop_scale[p] * z_pop[p];
    pop_val[p] = pop_log[p] ? exp(log(pop_loc[p]) + eta) : pop_loc[p] + eta;
  }
  for (p in 1:PG) {
    for (g in 1:G) {
      real eta = grp_centered[p] ? grp_scale[p] * z_grp[p, g] : grp_scale[p] * z_mu[p] + omega[p] * z_grp[p, g];
      grp_val[p, g] = grp_log[p] ? exp(log(grp_loc[p]) + eta) : grp_loc[p] + eta;
    }
  }
  if (gq_mu) {
    array[C] vector[PP + PG] th_c;
    for (c in 1:C) {
      th_c[c] = append_row(pop_val, grp_val[:, cond_group[c]]);
    }
    mu_gq = predict_means(th_c, q_fixed, slot, knot_t, knot_v, n_int, int_start, int_seg, sol_t, sol_start,
                          sol_len, e_cond, e_sol, e_inp, m_eval, m_code, cst, rhs_slot, ode_solver, rtol, atol,
                          max_steps);
  }
}
