"""Protocols: experiments on one timeline -> piecewise-constant model inputs with their jump times.

A protocol file (YAML) lists events (exercise bouts, insulin and glucose infusions or boluses, glucose clamps, training
programmes) on one timeline in minutes from an origin; see ``docs/ARCHITECTURE.md`` section 2 and ``protocols/*.yaml``.
``parse_protocol`` validates a mapping (already loaded from YAML) and returns a ``Protocol``; ``build_inputs`` turns
it into ``InputArrays`` for one subject (body weight and surface area convert per-m^2 and per-kg doses).

Units of the model inputs: exercise intensity as a fraction of VO2max above rest [-]; insulin infusion [mU/kg/min];
glucose infusion [mg/kg/min]; clamp target [mg/dL].
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array

PAD_TIME = 1.0e12  # padding breakpoint far beyond any protocol end [min]


class ProtocolError(ValueError):
    """An impossible or malformed protocol; the message names the file, the event and the field."""

    def __init__(self, source: str, where: str, message: str):
        self.source, self.where, self.message = source, where, message
        super().__init__(f"{source}: {where}: {message}")


EVENT_TYPES = {
    "exercise", "insulin_infusion", "insulin_bolus", "glucose_infusion", "glucose_bolus", "glucose_clamp",
    "training", "detraining", "fast", "note",
}
INSULIN_UNITS = {"mU/m2/min", "mU/kg/min", "mU/min"}
INSULIN_DOSE_UNITS = {"mU/m2", "mU/kg", "mU"}  # insulin_bolus with `dose:`, given at a constant rate over duration_min
GLUCOSE_RATE_UNITS = {"mg/kg/min", "mg/min", "mg/m2/min"}
GLUCOSE_DOSE_UNITS = {"g/kg", "mg/kg", "g"}
_CLOCK = re.compile(r"^\s*day\s+(-?\d+)\s+(\d{1,2}):(\d{2})\s*$")
_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
_DUR = re.compile(r"^\s*([0-9.eE+-]+)\s*(min|h|d|day|days|week|weeks)\s*$")


@dataclasses.dataclass(frozen=True)
class Segment:
    """A constant-input interval [start, end) of one event, before merging."""

    start: float
    end: float
    kind: str  # exercise | insulin | glucose | clamp
    value: float  # intensity [-], insulin rate in declared unit, glucose rate [mg/kg/min or declared], clamp target
    unit: str = ""
    basal_target: bool = False
    event: int = -1


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    end: float  # [min]
    segments: tuple[Segment, ...]
    source: str = "<protocol>"
    markers: tuple[tuple[str, float], ...] = ()

    @property
    def has_clamp(self) -> bool:
        return any(s.kind == "clamp" for s in self.segments)


def parse_time(value: Any, source: str, where: str) -> float:
    """Minutes since the origin from a number, ``"day D HH:MM"``, ``"HH:MM"`` or ``"90 min"``/``"2 h"``/``"3 d"``."""
    if isinstance(value, bool):
        raise ProtocolError(source, where, f"expected a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ProtocolError(source, where, f"time must be finite, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _CLOCK.match(value)
        if m:
            d, hh, mm = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if hh > 23 or mm > 59:
                raise ProtocolError(source, where, f"invalid clock time {value!r}")
            return d * 1440.0 + hh * 60.0 + mm
        m = _HHMM.match(value)
        if m:
            hh, mm = int(m.group(1)), int(m.group(2))
            if hh > 23 or mm > 59:
                raise ProtocolError(source, where, f"invalid clock time {value!r}")
            return hh * 60.0 + mm
        m = _DUR.match(value)
        if m:
            return float(m.group(1)) * {"min": 1, "h": 60, "d": 1440, "day": 1440, "days": 1440, "week": 10080,
                                         "weeks": 10080}[m.group(2)]
    raise ProtocolError(source, where, f"cannot read time {value!r} (use minutes, 'day D HH:MM', 'HH:MM' or '2 h')")


def _num(ev: dict, key: str, source: str, where: str, *, positive: bool = False, lo=None, hi=None) -> float:
    if key not in ev:
        raise ProtocolError(source, where, f"missing field '{key}'")
    v = ev[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(source, f"{where}, field '{key}'", f"expected a finite number, got {v!r}")
    v = float(v)
    if positive and v <= 0:
        raise ProtocolError(source, f"{where}, field '{key}'", f"must be > 0, got {v}")
    if lo is not None and v < lo:
        raise ProtocolError(source, f"{where}, field '{key}'", f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ProtocolError(source, f"{where}, field '{key}'", f"must be <= {hi}, got {v}")
    return v


def _duration(ev: dict, source: str, where: str, start: float) -> float:
    if "duration_min" in ev:
        return _num(ev, "duration_min", source, where, positive=True)
    if "duration_h" in ev:
        return 60.0 * _num(ev, "duration_h", source, where, positive=True)
    if "end" in ev:
        end = parse_time(ev["end"], source, f"{where}, field 'end'")
        if end <= start:
            raise ProtocolError(source, f"{where}, field 'end'", f"end ({end} min) must be after start ({start} min)")
        return end - start
    raise ProtocolError(source, where, "missing field 'duration_min' (or 'duration_h' or 'end')")


_ALLOWED_KEYS = {
    "exercise": {"type", "start", "duration_min", "duration_h", "end", "intensity", "label"},
    "insulin_infusion": {"type", "start", "duration_min", "duration_h", "end", "rate", "unit", "label"},
    "insulin_bolus": {"type", "start", "duration_min", "rate", "dose", "unit", "label"},
    "glucose_infusion": {"type", "start", "duration_min", "duration_h", "end", "rate", "unit", "label"},
    "glucose_bolus": {"type", "start", "duration_min", "dose", "unit", "label"},
    "glucose_clamp": {"type", "start", "duration_min", "duration_h", "end", "target", "target_mg_dl", "label"},
    "training": {"type", "start", "weeks", "sessions_per_week", "duration_min", "intensity", "label"},
    "detraining": {"type", "start", "label"},
    "fast": {"type", "start", "label"},
    "note": {"type", "start", "label", "text"},
}


def parse_protocol(doc: Any, source: str = "<protocol>") -> Protocol:
    """Validate a protocol mapping (from YAML) and return a ``Protocol``. Raises ``ProtocolError``."""
    if not isinstance(doc, dict):
        raise ProtocolError(source, "top level", "a protocol must be a mapping with 'name', 'end' and 'events'")
    unknown = set(doc) - {"name", "description", "end", "events", "origin", "notes"}
    if unknown:
        raise ProtocolError(source, "top level", f"unknown key(s) {sorted(unknown)}")
    for key in ("name", "end", "events"):
        if key not in doc:
            raise ProtocolError(source, "top level", f"missing key '{key}'")
    end = parse_time(doc["end"], source, "field 'end'")
    if end <= 0:
        raise ProtocolError(source, "field 'end'", f"protocol end must be after the origin, got {end} min")
    events = doc["events"]
    if not isinstance(events, list):
        raise ProtocolError(source, "field 'events'", "must be a list of events")
    segs: list[Segment] = []
    markers: list[tuple[str, float]] = []
    for i, ev in enumerate(events):
        where = f"event {i + 1}"
        if not isinstance(ev, dict) or "type" not in ev:
            raise ProtocolError(source, where, "each event must be a mapping with a 'type'")
        typ = ev["type"]
        where = f"event {i + 1} ({typ})"
        if typ not in EVENT_TYPES:
            raise ProtocolError(source, where, f"unknown event type {typ!r}; allowed: {sorted(EVENT_TYPES)}")
        extra = set(ev) - _ALLOWED_KEYS[typ]
        if extra:
            raise ProtocolError(source, where, f"unknown field(s) {sorted(extra)}")
        if "start" not in ev:
            raise ProtocolError(source, where, "missing field 'start'")
        start = parse_time(ev["start"], source, f"{where}, field 'start'")
        if start < 0:
            raise ProtocolError(source, f"{where}, field 'start'", f"events cannot start before the origin ({start} min)")
        if start >= end:
            raise ProtocolError(source, f"{where}, field 'start'", f"event starts at {start} min, at or after the "
                                f"protocol end ({end} min)")
        if typ in ("detraining", "fast", "note"):
            markers.append((typ, start))
            continue
        if typ == "training":
            weeks = _num(ev, "weeks", source, where, positive=True)
            spw = _num(ev, "sessions_per_week", source, where, positive=True, hi=14)
            dur = _num(ev, "duration_min", source, where, positive=True, hi=600)
            inten = _num(ev, "intensity", source, where, lo=0.0, hi=1.0)
            n = int(round(weeks * spw))
            for k in range(n):
                s0 = start + math.floor(k * 7.0 / spw) * 1440.0 if spw <= 7 else start + k * (10080.0 / spw)
                if s0 + dur > end:
                    raise ProtocolError(source, where, f"training session {k + 1} ends at {s0 + dur} min, after the "
                                        f"protocol end ({end} min)")
                segs.append(Segment(s0, s0 + dur, "exercise", inten, event=i))
            markers.append(("training", start))
            continue
        if typ in ("insulin_bolus", "glucose_bolus"):
            dur = _num(ev, "duration_min", source, where, positive=True) if "duration_min" in ev else 1.0
        else:
            dur = _duration(ev, source, where, start)
        if start + dur > end + 1e-9:
            raise ProtocolError(source, where, f"event ends at {start + dur} min, after the protocol end ({end} min)")
        if typ == "exercise":
            inten = _num(ev, "intensity", source, where, lo=0.0, hi=1.0)
            segs.append(Segment(start, start + dur, "exercise", inten, event=i))
        elif typ in ("insulin_infusion", "insulin_bolus"):
            unit = ev.get("unit")
            if typ == "insulin_bolus" and "dose" in ev:  # a dose (per kg, per m2 or total) over duration_min
                if "rate" in ev:
                    raise ProtocolError(source, f"{where}, field 'dose'", "give either 'rate' or 'dose', not both")
                if unit not in INSULIN_DOSE_UNITS:
                    raise ProtocolError(source, f"{where}, field 'unit'",
                                        f"unknown insulin dose unit {unit!r} for 'dose'; allowed: "
                                        f"{sorted(INSULIN_DOSE_UNITS)} (a 'rate' takes {sorted(INSULIN_UNITS)})")
                rate, unit = _num(ev, "dose", source, where, lo=0.0) / dur, unit + "/min"
            else:
                if unit not in INSULIN_UNITS:
                    hint = f"; or give 'dose' in {sorted(INSULIN_DOSE_UNITS)}" if typ == "insulin_bolus" else ""
                    raise ProtocolError(source, f"{where}, field 'unit'", f"unknown insulin unit {unit!r}; allowed "
                                        f"for 'rate': {sorted(INSULIN_UNITS)}{hint}")
                rate = _num(ev, "rate", source, where, lo=0.0)
            segs.append(Segment(start, start + dur, "insulin", rate, unit=unit, event=i))
        elif typ == "glucose_infusion":
            unit = ev.get("unit")
            if unit not in GLUCOSE_RATE_UNITS:
                raise ProtocolError(source, f"{where}, field 'unit'", f"unknown glucose rate unit {unit!r}; allowed: "
                                    f"{sorted(GLUCOSE_RATE_UNITS)}")
            segs.append(Segment(start, start + dur, "glucose", _num(ev, "rate", source, where, lo=0.0), unit=unit,
                                event=i))
        elif typ == "glucose_bolus":
            unit = ev.get("unit")
            if unit not in GLUCOSE_DOSE_UNITS:
                raise ProtocolError(source, f"{where}, field 'unit'", f"unknown glucose dose unit {unit!r}; allowed: "
                                    f"{sorted(GLUCOSE_DOSE_UNITS)}")
            dose = _num(ev, "dose", source, where, lo=0.0)
            segs.append(Segment(start, start + dur, "glucose", dose / dur, unit=unit + "/min", event=i))
        elif typ == "glucose_clamp":
            if "target_mg_dl" in ev:
                tgt, basal = _num(ev, "target_mg_dl", source, where, positive=True, hi=600), False
            elif ev.get("target", "basal") == "basal":
                tgt, basal = 0.0, True
            else:
                raise ProtocolError(source, f"{where}, field 'target'", "use target: basal or target_mg_dl: <number>")
            segs.append(Segment(start, start + dur, "clamp", tgt, basal_target=basal, event=i))
    # overlapping exercise or clamp events are impossible (one intensity, one target at a time)
    for kind in ("exercise", "clamp"):
        ks = sorted((s for s in segs if s.kind == kind), key=lambda s: s.start)
        for a, b in zip(ks, ks[1:]):
            if b.start < a.end - 1e-9:
                raise ProtocolError(source, f"event {b.event + 1} ({'exercise' if kind == 'exercise' else 'glucose_clamp'})",
                                    f"overlaps event {a.event + 1}: {kind} from {a.start} to {a.end} min and from "
                                    f"{b.start} to {b.end} min")
    return Protocol(name=str(doc["name"]), description=str(doc.get("description", "")), end=end,
                    segments=tuple(segs), source=source, markers=tuple(markers))


class Inputs(eqx.Module):
    """Protocol inputs at one time."""

    exercise: Array  # intensity above rest, fraction of VO2max [-]
    insulin_infusion: Array  # [mU/kg/min]
    glucose_infusion: Array  # [mg/kg/min]
    clamp_active: Array  # 1 during a clamp, else 0 [-]
    clamp_target_mgdl: Array  # [mg/dL] (ignored when clamp_target_basal)
    clamp_target_basal: Array  # 1 when the clamp holds the subject's basal glucose [-]
    insulin_forced: Array  # 1 when measured insulin drives the model [-]
    insulin_measured: Array  # measured plasma insulin, linear interpolation [mU/L]


class InputArrays(eqx.Module):
    """Piecewise-constant inputs on breakpoints ``t_break`` (padded), plus measured-insulin knots."""

    t_break: Array  # [K] segment starts [min], padded with PAD_TIME
    exercise: Array  # [K]
    insulin_infusion: Array  # [K] [mU/kg/min]
    glucose_infusion: Array  # [K] [mg/kg/min]
    clamp_active: Array  # [K]
    clamp_target_mgdl: Array  # [K]
    clamp_target_basal: Array  # [K]
    insulin_forced: Array  # scalar
    ins_t: Array  # [M] knots [min]
    ins_v: Array  # [M] [mU/L]

    def at(self, t: Array) -> Inputs:
        """Inputs at t, left-continuous: segment k covers (t_k, t_k+1]. The solver steps to just before each jump
        and restarts just after it; left-continuity keeps a stage that rounds onto a jump time on the old side
        (right-continuous inputs made the step size crawl towards every jump)."""
        k = jnp.clip(jnp.searchsorted(self.t_break, t, side="left") - 1, 0, self.t_break.shape[0] - 1)
        return Inputs(
            exercise=self.exercise[k], insulin_infusion=self.insulin_infusion[k],
            glucose_infusion=self.glucose_infusion[k], clamp_active=self.clamp_active[k],
            clamp_target_mgdl=self.clamp_target_mgdl[k], clamp_target_basal=self.clamp_target_basal[k],
            insulin_forced=self.insulin_forced, insulin_measured=jnp.interp(t, self.ins_t, self.ins_v),
        )

    def segment(self, k) -> "SegmentInputs":
        """The constant inputs of segment k (measured insulin still interpolated in time)."""
        return SegmentInputs(
            exercise=self.exercise[k], insulin_infusion=self.insulin_infusion[k],
            glucose_infusion=self.glucose_infusion[k], clamp_active=self.clamp_active[k],
            clamp_target_mgdl=self.clamp_target_mgdl[k], clamp_target_basal=self.clamp_target_basal[k],
            insulin_forced=self.insulin_forced, ins_t=self.ins_t, ins_v=self.ins_v,
        )

    def rest(self) -> Inputs:
        """Inputs of the basal fasting state (no exercise, infusions or clamp), forced insulin at its first value."""
        z = jnp.zeros(())
        return Inputs(exercise=z, insulin_infusion=z, glucose_infusion=z, clamp_active=z, clamp_target_mgdl=z,
                      clamp_target_basal=z, insulin_forced=self.insulin_forced, insulin_measured=self.ins_v[0])


class SegmentInputs(eqx.Module):
    """Inputs held constant over one protocol segment (used by the piecewise solve; same ``at`` interface)."""

    exercise: Array
    insulin_infusion: Array
    glucose_infusion: Array
    clamp_active: Array
    clamp_target_mgdl: Array
    clamp_target_basal: Array
    insulin_forced: Array
    ins_t: Array
    ins_v: Array

    def at(self, t: Array) -> Inputs:
        return Inputs(
            exercise=self.exercise, insulin_infusion=self.insulin_infusion, glucose_infusion=self.glucose_infusion,
            clamp_active=self.clamp_active, clamp_target_mgdl=self.clamp_target_mgdl,
            clamp_target_basal=self.clamp_target_basal, insulin_forced=self.insulin_forced,
            insulin_measured=jnp.interp(t, self.ins_t, self.ins_v),
        )


def _convert(seg: Segment, bw: float, bsa: float) -> float:
    if seg.kind == "insulin":
        return {"mU/kg/min": seg.value, "mU/m2/min": seg.value * bsa / bw, "mU/min": seg.value / bw}[seg.unit]
    if seg.kind == "glucose":
        return {
            "mg/kg/min": seg.value, "mg/min": seg.value / bw, "mg/m2/min": seg.value * bsa / bw,
            "g/kg/min": seg.value * 1000.0, "g/min": seg.value * 1000.0 / bw,
        }[seg.unit]
    return seg.value


def build_inputs(
    protocol: Protocol,
    body_weight_kg: float = 70.0,
    bsa_m2: float = 1.8,
    insulin_knots: tuple[np.ndarray, np.ndarray] | None = None,
    n_breaks: int | None = None,
    n_knots: int | None = None,
) -> InputArrays:
    """Piecewise-constant ``InputArrays`` for one subject. Pads to ``n_breaks``/``n_knots`` for batching."""
    if not (body_weight_kg > 0 and bsa_m2 > 0):
        raise ProtocolError(protocol.source, "covariates", "body weight and body surface area must be > 0")
    times = sorted({0.0, *(s.start for s in protocol.segments), *(s.end for s in protocol.segments)})
    times = [t for t in times if t < protocol.end]
    cols = {k: [] for k in ("exercise", "insulin", "glucose", "clamp", "target", "basal")}
    for t in times:
        active = [s for s in protocol.segments if s.start <= t < s.end]
        ex = [s for s in active if s.kind == "exercise"]
        cl = [s for s in active if s.kind == "clamp"]
        cols["exercise"].append(ex[0].value if ex else 0.0)
        cols["insulin"].append(sum(_convert(s, body_weight_kg, bsa_m2) for s in active if s.kind == "insulin"))
        cols["glucose"].append(sum(_convert(s, body_weight_kg, bsa_m2) for s in active if s.kind == "glucose"))
        cols["clamp"].append(1.0 if cl else 0.0)
        cols["target"].append(cl[0].value if cl else 0.0)
        cols["basal"].append(1.0 if (cl and cl[0].basal_target) else 0.0)
    k = len(times)
    n_breaks = n_breaks or k
    if n_breaks < k:
        raise ValueError(f"n_breaks={n_breaks} < {k} breakpoints needed by {protocol.name}")
    pad = n_breaks - k

    def arr(vals, fill=0.0):
        return jnp.asarray(np.concatenate([np.asarray(vals, float), np.full(pad, fill)]))

    if insulin_knots is None:
        it, iv, forced = np.array([0.0]), np.array([0.0]), 0.0
    else:
        it, iv = (np.asarray(a, float) for a in insulin_knots)
        if it.ndim != 1 or it.shape != iv.shape or it.size == 0:
            raise ValueError("insulin knots must be two 1-D arrays of equal, non-zero length")
        forced = 1.0
    m = it.size
    n_knots = n_knots or m
    it = np.concatenate([it, it[-1] + 1.0 + np.arange(n_knots - m)])  # flat extension keeps interp monotone
    iv = np.concatenate([iv, np.full(n_knots - m, iv[-1])])
    return InputArrays(
        t_break=arr(times, PAD_TIME), exercise=arr(cols["exercise"]), insulin_infusion=arr(cols["insulin"]),
        glucose_infusion=arr(cols["glucose"]), clamp_active=arr(cols["clamp"]), clamp_target_mgdl=arr(cols["target"]),
        clamp_target_basal=arr(cols["basal"]), insulin_forced=jnp.asarray(forced), ins_t=jnp.asarray(it),
        ins_v=jnp.asarray(iv),
    )


def n_breakpoints(protocol: Protocol) -> int:
    times = {0.0, *(s.start for s in protocol.segments), *(s.end for s in protocol.segments)}
    return len([t for t in times if t < protocol.end])
