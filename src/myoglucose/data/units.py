"""Canonical observables, units and the allowed unit conversions (docs/ARCHITECTURE.md section 1).

Every conversion is a multiplication ``canonical = factor * as_published``; standard deviations and standard
errors are converted with the same factor.  Rate conversions that need a body weight or a body surface area take
them from the subject covariates of the condition the value belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = [
    "CANONICAL_UNITS",
    "OBSERVABLE_DESCRIPTIONS",
    "ALLOWED_NEGATIVE",
    "UNIT_ALIASES",
    "UnitConversionError",
    "Conversion",
    "allowed_units",
    "canonical_unit",
    "conversion_for",
]

#: observable_id -> canonical unit (docs/ARCHITECTURE.md, "Canonical observables and units")
CANONICAL_UNITS: dict[str, str] = {
    "glucose_plasma": "mg/dL",
    "glucose_whole_blood": "mg/dL",
    "insulin_plasma": "mU/L",
    "gir": "mg/kg/min",
    "rd": "mg/kg/min",
    "ra": "mg/kg/min",
    "egp": "mg/kg/min",
    "delta_uptake": "mg/kg/min",
    "delta_egp": "mg/kg/min",
    "il6": "pg/mL",
    "ampk_fold": "1",
    "muscle_uptake": "mg/kg/min",
    "glut4_membrane": "1",
}

OBSERVABLE_DESCRIPTIONS: dict[str, str] = {
    "glucose_plasma": "plasma glucose",
    "glucose_whole_blood": "whole-blood glucose (modelled as plasma x r_wb)",
    "insulin_plasma": "plasma insulin (= uU/mL)",
    "gir": "glucose infusion rate during a clamp",
    "rd": "glucose rate of disappearance",
    "ra": "glucose rate of appearance (endogenous + infused)",
    "egp": "endogenous glucose production",
    "delta_uptake": "exercise-induced increment of glucose uptake",
    "delta_egp": "exercise-induced increment of glucose production",
    "il6": "plasma IL-6",
    "ampk_fold": "AMPK activity, fold of rest",
    "muscle_uptake": "skeletal-muscle glucose uptake",
    "glut4_membrane": "fraction of muscle GLUT4 at the plasma membrane",
}

#: Increments may legitimately be negative; every other observable must be >= 0.
ALLOWED_NEGATIVE: frozenset[str] = frozenset({"delta_uptake", "delta_egp"})

#: Spellings accepted for a unit and the unit they mean (only unambiguous identities).
UNIT_ALIASES: dict[str, str] = {"uU/mL": "mU/L", "µU/mL": "mU/L", "μU/mL": "mU/L"}

_KIND: dict[str, str] = {
    "glucose_plasma": "glucose",
    "glucose_whole_blood": "glucose",
    "insulin_plasma": "insulin",
    "gir": "rate",
    "rd": "rate",
    "ra": "rate",
    "egp": "rate",
    "delta_uptake": "rate",
    "delta_egp": "rate",
    "muscle_uptake": "rate",
    "il6": "il6",
    "ampk_fold": "dimensionless",
    "glut4_membrane": "dimensionless",
}


class UnitConversionError(ValueError):
    """A unit is unknown for an observable, or a covariate needed by the conversion is missing."""


@dataclass(frozen=True)
class Conversion:
    unit_from: str
    unit_to: str
    factor: float
    description: str  # human-readable, recorded in provenance.tsv


def _const(factor: float, text: str) -> Callable[[float | None, float | None], tuple[float, str]]:
    return lambda bw, bsa: (factor, text)


def _per_bw(bw: float | None, bsa: float | None) -> tuple[float, str]:
    if bw is None:
        raise UnitConversionError("mg/min -> mg/kg/min needs body_weight_kg of the subject")
    return 1.0 / bw, f"mg/min / body_weight_kg ({bw:g} kg)"


def _per_bsa(bw: float | None, bsa: float | None) -> tuple[float, str]:
    if bw is None or bsa is None:
        raise UnitConversionError("mg/m2/min -> mg/kg/min needs body_weight_kg and bsa_m2 of the subject")
    return bsa / bw, f"mg/m2/min x bsa_m2 / body_weight_kg ({bsa:g} m2 / {bw:g} kg)"


# kind -> unit as published -> function(bw, bsa) -> (factor, description)
_CONVERSIONS: dict[str, dict[str, Callable[[float | None, float | None], tuple[float, str]]]] = {
    "glucose": {
        "mg/dL": _const(1.0, "none"),
        "mmol/L": _const(18.0, "mmol/L x 18.0 -> mg/dL"),
    },
    "insulin": {
        "mU/L": _const(1.0, "none"),
        "pmol/L": _const(1.0 / 6.0, "pmol/L / 6.0 -> mU/L"),
    },
    "rate": {
        "mg/kg/min": _const(1.0, "none"),
        "mg/min": _per_bw,
        "mg/m2/min": _per_bsa,
        "umol/kg/min": _const(0.18016, "umol/kg/min x 0.18016 -> mg/kg/min"),
    },
    "il6": {"pg/mL": _const(1.0, "none")},
    "dimensionless": {"1": _const(1.0, "none")},
}


def canonical_unit(observable_id: str) -> str:
    """Canonical unit of ``observable_id`` (KeyError-free: raises UnitConversionError for unknown ids)."""
    try:
        return CANONICAL_UNITS[observable_id]
    except KeyError:
        raise UnitConversionError(
            f"unknown observable '{observable_id}'; known: {', '.join(sorted(CANONICAL_UNITS))}"
        ) from None


def allowed_units(observable_id: str) -> list[str]:
    """Units accepted as input for ``observable_id`` (canonical first), aliases excluded."""
    kind = _KIND[observable_id] if observable_id in _KIND else None
    if kind is None:
        canonical_unit(observable_id)  # raises
    return list(_CONVERSIONS[kind])


def conversion_for(
    observable_id: str,
    unit: str,
    body_weight_kg: float | None = None,
    bsa_m2: float | None = None,
) -> Conversion:
    """Conversion of ``unit`` (as published) to the canonical unit of ``observable_id``."""
    target = canonical_unit(observable_id)
    unit_norm = UNIT_ALIASES.get(unit, unit)
    table = _CONVERSIONS[_KIND[observable_id]]
    if unit_norm not in table:
        raise UnitConversionError(
            f"unknown unit '{unit}' for observable '{observable_id}'; allowed: {', '.join(table)}"
        )
    factor, text = table[unit_norm](body_weight_kg, bsa_m2)
    if unit_norm != unit and text == "none":
        text = f"{unit} = {unit_norm} (identical)"
    return Conversion(unit_from=unit, unit_to=target, factor=float(factor), description=text)
