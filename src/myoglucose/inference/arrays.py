"""Tidy tables -> ``FitData``: padded arrays for a vectorised (vmap over conditions) log density.

Every condition gets its own ``InputArrays`` (padded to common sizes so conditions batch), its own grid of unique
observation times (padded by repeating the last time), and every measurement points at (condition, time slot,
observable). Insulin-forced conditions take their measured ``insulin_plasma`` series as the forcing input and those
rows are not part of the likelihood.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import yaml

from ..model.protocol import InputArrays, build_inputs, n_breakpoints, parse_protocol
from ..model.simulate import OBSERVABLE_UNITS, active_states


class FitArrays(eqx.Module):
    inputs: InputArrays  # batched over conditions (leading axis C)
    ts: jax.Array  # [C, T] observation time grid per condition [min]
    t1: jax.Array  # [C] end of integration [min]
    cond_group: jax.Array  # [C] group index of each condition
    cond_subject: jax.Array  # [C] subject index of each condition (into ``FitData.subjects``)
    subject_group: jax.Array  # [S] group index of each subject
    m_cond: jax.Array  # [N] condition index of each measurement
    m_time: jax.Array  # [N] time-slot index into ts[c]
    m_obs: jax.Array  # [N] observable index (into ``FitData.observables``)
    values: jax.Array  # [N] observed values (canonical units)
    known_sd: jax.Array  # [N] known measurement sd of the value (sem for group means), 0 when unknown


@dataclasses.dataclass(frozen=True)
class FitData:
    arrays: FitArrays
    groups: tuple[str, ...]
    subjects: tuple[str, ...]  # subject ids (conditions.subject_id; the group when a table has no subject column)
    conditions: tuple[str, ...]
    observables: tuple[str, ...]
    measurements: pd.DataFrame  # the likelihood rows, in the order of the arrays
    protocols: dict  # condition_id -> Protocol
    covariates: pd.DataFrame  # conditions table
    active: tuple[str, ...]  # states integrated for these protocols (others stay basal)


def _protocol_for(path: str, repo_root: Path):
    p = Path(path)
    if not p.is_absolute():
        p = repo_root / p
    return parse_protocol(yaml.safe_load(p.read_text()), str(path))


def build_fit_data(measurements: pd.DataFrame, conditions: pd.DataFrame, repo_root: Path,
                   observables_in_model: set[str] | None = None) -> FitData:
    """Arrays for the likelihood from validated tidy tables."""
    meas = measurements.copy()
    conds = conditions.copy().reset_index(drop=True)
    groups = tuple(sorted(conds["group"].astype(str).unique()))
    cond_ids = tuple(conds["condition_id"].astype(str))
    protocols = {c: _protocol_for(pf, repo_root) for c, pf in zip(cond_ids, conds["protocol_file"])}

    forced = {c: str(m) == "forced" for c, m in zip(cond_ids, conds["insulin_mode"])}
    knots = {}
    for c in cond_ids:
        if forced[c]:
            ins = meas[(meas["condition_id"] == c) & (meas["observable_id"] == "insulin_plasma")].sort_values("time_min")
            if ins.empty:
                raise ValueError(f"condition {c!r} has insulin_mode 'forced' but no insulin_plasma measurements")
            knots[c] = (ins["time_min"].to_numpy(float), ins["value"].to_numpy(float))
    lik = meas[~meas.apply(lambda r: forced.get(r["condition_id"], False) and r["observable_id"] == "insulin_plasma",
                           axis=1)].copy()
    if observables_in_model is not None:
        lik = lik[lik["observable_id"].isin(observables_in_model)]
    unknown = set(lik["observable_id"]) - set(OBSERVABLE_UNITS)
    if unknown:
        raise ValueError(f"unknown observable(s) {sorted(unknown)}")
    lik = lik[lik["condition_id"].isin(cond_ids)].reset_index(drop=True)
    if lik.empty:
        raise ValueError("no measurements left for the likelihood")
    observables = tuple(sorted(lik["observable_id"].unique()))

    K = max(n_breakpoints(protocols[c]) for c in cond_ids)
    M = max([len(k[0]) for k in knots.values()] + [1])
    inputs = []
    for c, row in zip(cond_ids, conds.to_dict("records")):
        inputs.append(build_inputs(protocols[c], float(row["body_weight_kg"]), float(row["bsa_m2"]),
                                   knots.get(c), n_breaks=K, n_knots=M))
    batched = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *inputs)

    grids = []
    for c in cond_ids:
        t = np.unique(lik.loc[lik["condition_id"] == c, "time_min"].to_numpy(float))
        grids.append(t if t.size else np.array([protocols[c].end]))
    T = max(g.size for g in grids)
    ts = np.stack([np.concatenate([g, np.full(T - g.size, g[-1])]) for g in grids])
    t1 = np.array([max(protocols[c].end, g[-1]) for c, g in zip(cond_ids, grids)])

    ci = {c: i for i, c in enumerate(cond_ids)}
    m_cond = lik["condition_id"].map(ci).to_numpy(int)
    m_time = np.array([int(np.searchsorted(grids[i], t)) for i, t in zip(m_cond, lik["time_min"].to_numpy(float))])
    oi = {o: i for i, o in enumerate(observables)}
    m_obs = lik["observable_id"].map(oi).to_numpy(int)
    sd = pd.to_numeric(lik.get("sd"), errors="coerce") if "sd" in lik else pd.Series(np.nan, index=lik.index)
    sem = pd.to_numeric(lik.get("sem"), errors="coerce") if "sem" in lik else pd.Series(np.nan, index=lik.index)
    n = pd.to_numeric(lik.get("n"), errors="coerce") if "n" in lik else pd.Series(np.nan, index=lik.index)
    # a group mean with a known sd and n has sem = sd / sqrt(n); a known sem is used as given
    known = np.where(np.isfinite(sem), sem, np.where(np.isfinite(sd) & np.isfinite(n) & (n > 0), sd / np.sqrt(n),
                                                     np.where(np.isfinite(sd), sd, 0.0)))
    gi = {g: i for i, g in enumerate(groups)}
    cond_subj = (conds["subject_id"] if "subject_id" in conds else conds["group"]).astype(str)
    subjects = tuple(dict.fromkeys(cond_subj))
    subj_group = {}
    for s_id, g in zip(cond_subj, conds["group"].astype(str)):
        if subj_group.setdefault(s_id, g) != g:
            raise ValueError(f"subject {s_id!r} appears in two groups ({subj_group[s_id]!r} and {g!r}) in the "
                             "conditions table; a subject belongs to one group")
    si = {s_id: i for i, s_id in enumerate(subjects)}
    arrays = FitArrays(
        inputs=batched, ts=jnp.asarray(ts), t1=jnp.asarray(t1),
        cond_group=jnp.asarray(conds["group"].astype(str).map(gi).to_numpy(int)),
        cond_subject=jnp.asarray(cond_subj.map(si).to_numpy(int)),
        subject_group=jnp.asarray(np.array([gi[subj_group[s_id]] for s_id in subjects], dtype=int)),
        m_cond=jnp.asarray(m_cond), m_time=jnp.asarray(m_time), m_obs=jnp.asarray(m_obs),
        values=jnp.asarray(lik["value"].to_numpy(float)), known_sd=jnp.asarray(np.asarray(known, float)),
    )
    return FitData(arrays=arrays, groups=groups, subjects=subjects, conditions=cond_ids, observables=observables, measurements=lik,
                   protocols=protocols, covariates=conds,
                   active=active_states(list(protocols.values()), insulin_kinetic=not all(forced.values())))
