"""Model specifications: ``models/<variant>/`` (model.yaml, parameters.tsv, observables.tsv) -> ``ModelSpec``.

A variant may name a ``parent`` and override rows of the parent's parameter table (nested variants), so a variant is
a small, reviewable diff. Every error names the file, the row and the column.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .equations import PARAMETER_UNITS

PARAM_COLUMNS = [
    "parameterId", "unit", "nominalValue", "lowerBound", "upperBound", "parameterScale", "priorType", "priorLoc",
    "priorScale", "estimate", "level", "description", "reference",
]
#: optional columns and their default (a table may leave them out)
OPTIONAL_PARAM_COLUMNS = {"hierarchy": "noncentered"}
#: ``noncentered``: group values are ``loc + s * z_mu + omega * z_g`` with standard-normal ``z_g`` (best when the data
#: say little about each group); ``centered``: the group values themselves are sampled around the population location
#: (best when the data pin each group's value, e.g. basal glucose measured in every group: the non-centred form then
#: turns that constraint into a curved ridge in (z_mu, omega, z_g) that NUTS crosses with divergences).
HIERARCHY = {"noncentered", "centered"}
OBS_COLUMNS = ["observableId", "expression", "unit", "noiseDistribution", "noiseParameter", "description"]
PRIOR_TYPES = {"lognormal", "normal", "fixed"}
#: ``population``: one value shared by everyone; ``group``: population -> group (see ``HIERARCHY``); ``subject``:
#: population -> group -> subject (a subject's value scatters around its group's typical value; with one subject per
#: group, e.g. group means, it is a group-level parameter); ``fixed``: not estimated.
LEVELS = {"population", "group", "subject", "fixed"}
NOISE = {"normal", "lognormal", "proportional"}
MODEL_KEYS = {"id", "description", "parent", "equations", "overrides", "noise_priors", "notes"}


class SpecError(ValueError):
    def __init__(self, file: str, row: int | None, column: str | None, message: str):
        self.file, self.row, self.column, self.message = file, row, column, message
        loc = f"{file}" + (f": row {row}" if row is not None else "") + (f", column '{column}'" if column else "")
        super().__init__(f"{loc}: {message}")


@dataclasses.dataclass(frozen=True)
class ParamRow:
    id: str
    unit: str
    nominal: float
    lower: float
    upper: float
    scale: str
    prior: str
    loc: float
    prior_scale: float
    estimate: bool
    level: str
    description: str
    reference: str
    hierarchy: str = "noncentered"

    @property
    def centered(self) -> bool:
        return self.hierarchy == "centered"


@dataclasses.dataclass(frozen=True)
class ObservableRow:
    id: str
    expression: str
    unit: str
    noise: str
    noise_parameter: str
    description: str


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    id: str
    description: str
    directory: str
    params: dict[str, ParamRow]
    observables: dict[str, ObservableRow]
    noise_priors: dict[str, float]
    lineage: tuple[str, ...]

    @property
    def nominal(self) -> dict[str, float]:
        return {k: r.nominal for k, r in self.params.items()}

    @property
    def estimated(self) -> list[ParamRow]:
        return [r for r in self.params.values() if r.estimate]

    def sha_inputs(self) -> list[Path]:
        files = []
        for d in self.lineage:
            for name in ("model.yaml", "parameters.tsv", "observables.tsv"):
                f = Path(d) / name
                if f.exists():
                    files.append(f)
        return files


def _read_tsv(path: Path, columns: list[str], optional: dict | None = None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    except Exception as e:  # pragma: no cover - pandas message is specific enough
        raise SpecError(str(path), None, None, f"cannot read table: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SpecError(str(path), 1, missing[0], f"missing column(s) {missing}")
    unknown = [c for c in df.columns if c not in columns and c not in (optional or {})]
    if unknown:
        raise SpecError(str(path), 1, unknown[0], f"unknown column(s) {unknown}; expected {columns}"
                        + (f" and optionally {list(optional)}" if optional else ""))
    for c, default in (optional or {}).items():
        if c not in df.columns:
            df[c] = default
    if df.empty:
        raise SpecError(str(path), None, None, "table is empty")
    return df


def _float(path, row, col, s) -> float:
    try:
        v = float(s)
    except ValueError:
        raise SpecError(str(path), row, col, f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise SpecError(str(path), row, col, f"expected a finite number, got {s!r}")
    return v


def _param_row(path: Path, row: int, rec: dict) -> ParamRow:
    pid = rec["parameterId"]
    if pid not in PARAMETER_UNITS:
        raise SpecError(str(path), row, "parameterId", f"unknown parameter {pid!r} (not in the model equations)")
    if not rec["unit"].strip():
        raise SpecError(str(path), row, "unit", f"parameter {pid!r} has no unit")
    if rec["unit"] != PARAMETER_UNITS[pid]:
        raise SpecError(str(path), row, "unit", f"unit {rec['unit']!r} of {pid!r} differs from the equations' "
                        f"{PARAMETER_UNITS[pid]!r}")
    nom = _float(path, row, "nominalValue", rec["nominalValue"])
    lo = _float(path, row, "lowerBound", rec["lowerBound"])
    hi = _float(path, row, "upperBound", rec["upperBound"])
    if lo > hi:
        raise SpecError(str(path), row, "lowerBound", f"lower bound {lo} > upper bound {hi} for {pid!r}")
    if not lo <= nom <= hi:
        raise SpecError(str(path), row, "nominalValue", f"nominal value {nom} of {pid!r} outside [{lo}, {hi}]")
    scale = rec["parameterScale"]
    if scale not in ("log", "lin"):
        raise SpecError(str(path), row, "parameterScale", f"expected 'log' or 'lin', got {scale!r}")
    if scale == "log" and lo <= 0:
        raise SpecError(str(path), row, "lowerBound", f"log-scale parameter {pid!r} needs a positive lower bound")
    prior = rec["priorType"]
    if prior not in PRIOR_TYPES:
        raise SpecError(str(path), row, "priorType", f"unknown prior {prior!r}; allowed {sorted(PRIOR_TYPES)}")
    loc = _float(path, row, "priorLoc", rec["priorLoc"])
    ps = _float(path, row, "priorScale", rec["priorScale"])
    if prior != "fixed":
        if ps <= 0:
            raise SpecError(str(path), row, "priorScale", f"prior scale of {pid!r} must be > 0")
        if not lo <= loc <= hi:
            raise SpecError(str(path), row, "priorLoc", f"prior location {loc} of {pid!r} outside the bounds "
                            f"[{lo}, {hi}]")
        if prior == "lognormal" and loc <= 0:
            raise SpecError(str(path), row, "priorLoc", f"log-normal prior of {pid!r} needs a positive median")
    est = rec["estimate"].strip()
    if est not in ("0", "1"):
        raise SpecError(str(path), row, "estimate", f"expected 0 or 1, got {est!r}")
    level = rec["level"]
    if level not in LEVELS:
        raise SpecError(str(path), row, "level", f"unknown level {level!r}; allowed {sorted(LEVELS)}")
    if est == "1" and (prior == "fixed" or level == "fixed"):
        raise SpecError(str(path), row, "estimate", f"{pid!r} is estimated but has a fixed prior or level")
    hierarchy = (rec.get("hierarchy") or OPTIONAL_PARAM_COLUMNS["hierarchy"]).strip()
    if hierarchy not in HIERARCHY:
        raise SpecError(str(path), row, "hierarchy", f"unknown hierarchy {hierarchy!r}; allowed {sorted(HIERARCHY)}")
    if hierarchy == "centered" and level not in ("group", "subject"):
        raise SpecError(str(path), row, "hierarchy", f"'centered' applies to group- and subject-level parameters; "
                        f"{pid!r} is {level!r}")
    return ParamRow(pid, rec["unit"], nom, lo, hi, scale, prior, loc, ps, est == "1", level, rec["description"],
                    rec["reference"], hierarchy)


def load_parameters(path: Path) -> dict[str, ParamRow]:
    df = _read_tsv(path, PARAM_COLUMNS, OPTIONAL_PARAM_COLUMNS)
    out: dict[str, ParamRow] = {}
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 2  # header is row 1
        r = _param_row(path, row, rec)
        if r.id in out:
            raise SpecError(str(path), row, "parameterId", f"duplicate parameter {r.id!r}")
        out[r.id] = r
    return out


def load_observables(path: Path) -> dict[str, ObservableRow]:
    from .simulate import OBSERVABLE_UNITS

    df = _read_tsv(path, OBS_COLUMNS)
    out = {}
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 2
        oid = rec["observableId"]
        if oid not in OBSERVABLE_UNITS:
            raise SpecError(str(path), row, "observableId", f"unknown observable {oid!r}")
        if rec["unit"] != OBSERVABLE_UNITS[oid]:
            raise SpecError(str(path), row, "unit", f"unit of {oid!r} must be {OBSERVABLE_UNITS[oid]!r}")
        if rec["noiseDistribution"] not in NOISE:
            raise SpecError(str(path), row, "noiseDistribution", f"unknown noise model {rec['noiseDistribution']!r}; "
                            f"allowed {sorted(NOISE)}")
        out[oid] = ObservableRow(oid, rec["expression"], rec["unit"], rec["noiseDistribution"], rec["noiseParameter"],
                                 rec["description"])
    return out


def load_model(model_dir: str | Path) -> ModelSpec:
    """Load a variant, resolving its parent chain and overrides."""
    model_dir = Path(model_dir)
    myaml = model_dir / "model.yaml"
    if not myaml.exists():
        raise SpecError(str(myaml), None, None, "model variant has no model.yaml")
    try:
        doc = yaml.safe_load(myaml.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpecError(str(myaml), mark.line + 1 if mark is not None else None, None,
                        f"invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict):
        raise SpecError(str(myaml), None, None, "model.yaml must be a mapping")
    unknown = set(doc) - MODEL_KEYS
    if unknown:
        raise SpecError(str(myaml), None, sorted(unknown)[0], f"unknown key(s) {sorted(unknown)}")
    parent = doc.get("parent")
    if parent:
        base = load_model(model_dir.parent / parent)
        params = dict(base.params)
        observables = dict(base.observables)
        noise = dict(base.noise_priors)
        lineage = (*base.lineage, str(model_dir))
    else:
        params = load_parameters(model_dir / "parameters.tsv")
        observables = load_observables(model_dir / "observables.tsv")
        noise = {}
        lineage = (str(model_dir),)
    if parent and (model_dir / "parameters.tsv").exists():
        params.update(load_parameters(model_dir / "parameters.tsv"))
    if parent and (model_dir / "observables.tsv").exists():
        observables.update(load_observables(model_dir / "observables.tsv"))
    for pid, ov in (doc.get("overrides") or {}).items():
        if pid not in params:
            raise SpecError(str(myaml), None, f"overrides.{pid}", f"unknown parameter {pid!r}")
        rec = {c: str(getattr(params[pid], a)) for c, a in zip(PARAM_COLUMNS, [
            "id", "unit", "nominal", "lower", "upper", "scale", "prior", "loc", "prior_scale", "estimate", "level",
            "description", "reference"])}
        rec["hierarchy"] = params[pid].hierarchy
        rec["estimate"] = "1" if params[pid].estimate else "0"
        if not isinstance(ov, dict):
            raise SpecError(str(myaml), None, f"overrides.{pid}", "override must be a mapping of column: value")
        for k, v in ov.items():
            if (k not in PARAM_COLUMNS and k not in OPTIONAL_PARAM_COLUMNS) or k == "parameterId":
                raise SpecError(str(myaml), None, f"overrides.{pid}.{k}", f"unknown column {k!r}")
            rec[k] = str(int(v)) if k == "estimate" else str(v)
        if "hierarchy" not in ov and rec["level"] not in ("group", "subject"):
            rec["hierarchy"] = "noncentered"  # an inherited centring lapses with the group level
        params[pid] = _param_row(myaml, None, rec)
    missing = set(PARAMETER_UNITS) - set(params)
    if missing:
        raise SpecError(str(model_dir / "parameters.tsv"), None, "parameterId", f"missing parameter(s) "
                        f"{sorted(missing)}")
    noise.update({k: float(v) for k, v in (doc.get("noise_priors") or {}).items()})
    for o in observables.values():
        if o.noise_parameter not in noise:
            raise SpecError(str(myaml), None, "noise_priors", f"no noise prior for {o.noise_parameter!r}")
    return ModelSpec(id=str(doc.get("id", model_dir.name)), description=str(doc.get("description", "")),
                     directory=str(model_dir), params=params, observables=observables, noise_priors=noise,
                     lineage=lineage)


def nominal_params(spec: ModelSpec, overrides: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    vals = spec.nominal
    for k, v in (overrides or {}).items():
        if k not in vals:
            raise KeyError(f"unknown parameter {k!r}")
        vals[k] = float(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in vals.items()}
