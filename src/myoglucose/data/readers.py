"""Readers for a dataset folder: ``dataset.yaml`` (with line numbers), raw CSV files and ``SHA256SUMS``.

Every problem is raised as :class:`~myoglucose.data.errors.DataValidationError` naming the file, the line
(``row``; see :mod:`myoglucose.data.errors`) and the column (for YAML: the key).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DataValidationError
from .schemas import INSULIN_MODES, parse_float, parse_int

__all__ = [
    "LINE_KEY",
    "RawTable",
    "DatasetSpec",
    "CitationSpec",
    "GroupSpec",
    "SubjectSpec",
    "ConditionSpec",
    "FileSpec",
    "load_yaml_with_lines",
    "read_dataset_yaml",
    "read_raw_csv",
    "read_sha256sums",
    "sha256_of",
    "read_protocol_header",
    "protocol_time_min",
]

LINE_KEY = "__line__"
_KEY_LINES = "__key_lines__"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping and of each of its keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    key_lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        value = loader.construct_object(value_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        mapping[key] = value
        key_lines[key] = key_node.start_mark.line + 1
    mapping[LINE_KEY] = node.start_mark.line + 1
    mapping[_KEY_LINES] = key_lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_with_lines(path: Path, label: str) -> Any:
    """Parse YAML; every dict gets ``__line__`` (its first line) and per-key lines for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataValidationError(label, 1, "*", "file does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(label, 1, "*", f"not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise DataValidationError(label, line, "*", f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - unmarked errors are rare
        raise DataValidationError(label, 1, "*", f"invalid YAML: {exc}") from None


def _line(d: dict, key: str | None = None) -> int:
    if key is not None:
        return d.get(_KEY_LINES, {}).get(key, d.get(LINE_KEY, 1))
    return d.get(LINE_KEY, 1)


def _public_keys(d: dict) -> list:
    return [k for k in d if k not in (LINE_KEY, _KEY_LINES)]


# --------------------------------------------------------------------------------------------- dataset.yaml
@dataclass(frozen=True)
class CitationSpec:
    id: str
    authors: str
    journal: str
    year: int
    title: str = ""
    volume_pages: str = ""
    doi_or_url: str = ""
    line: int = 1

    def formatted(self) -> str:
        parts = [self.authors.rstrip(".") + "."]
        if self.title:
            parts.append(self.title.rstrip(".") + ".")
        tail = f"{self.journal} {self.year}"
        if self.volume_pages:
            tail += f";{self.volume_pages}"
        parts.append(tail + ".")
        return " ".join(parts)


@dataclass(frozen=True)
class GroupSpec:
    id: str
    n: int | None
    description: str = ""
    line: int = 1


@dataclass(frozen=True)
class SubjectSpec:
    id: str
    group: str
    n: int | None
    body_weight_kg: float
    bsa_m2: float
    covariate_basis: str
    line: int = 1


@dataclass(frozen=True)
class ConditionSpec:
    id: str
    subject: str
    protocol_file: str
    insulin_mode: str
    notes: str = ""
    line: int = 1
    key_lines: dict = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


@dataclass(frozen=True)
class Correction:
    """One curation decision on one raw row, named by its time: move it (``set_time_min``) or leave it out of the
    tidy table (``exclude``). Every correction carries its reason, which goes into the provenance table."""

    time_min: float
    set_time_min: float | None
    exclude: bool
    reason: str
    line: int = 1

    def describe(self) -> str:
        what = "excluded" if self.exclude else f"time set to {self.set_time_min:g} min"
        return f"row at {self.time_min:g} min {what} ({self.reason})"


@dataclass(frozen=True)
class FileSpec:
    path: str
    observable_id: str | None
    unit: str | None
    condition: str | None
    citation: str
    figure_or_table: str
    how_obtained: str
    measurement_error: str
    n: int | None
    line: int = 1
    key_lines: dict = field(default_factory=dict)
    corrections: tuple[Correction, ...] = ()

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


@dataclass(frozen=True)
class DatasetSpec:
    dataset_id: str
    title: str
    how_obtained: str
    citations: dict[str, CitationSpec]
    groups: dict[str, GroupSpec]
    subjects: dict[str, SubjectSpec]
    conditions: dict[str, ConditionSpec]
    files: list[FileSpec]
    label: str
    raw: dict = field(default_factory=dict, repr=False)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

_TOP_KEYS_REQUIRED = ("dataset_id", "title", "citations", "how_obtained", "groups", "subjects", "conditions", "files")
_TOP_KEYS_OPTIONAL = ("notes", "assumptions", "anchors", "licence", "license", "description")
_CITATION_KEYS = (("id", "authors", "journal", "year"), ("title", "volume_pages", "doi_or_url", "figure", "notes"))
_GROUP_KEYS = (("id", "n"), ("description",))
_SUBJECT_KEYS = (("id", "group", "body_weight_kg", "bsa_m2", "covariate_basis"), ("n", "notes"))
_CONDITION_KEYS = (("id", "subject", "protocol_file", "insulin_mode"), ("notes",))
_FILE_KEYS = (
    ("path", "figure_or_table"),
    ("observable_id", "unit", "condition", "citation", "how_obtained", "measurement_error", "n", "notes",
     "corrections"),
)
_CORRECTION_KEYS = (("time_min", "reason"), ("set_time_min", "exclude"))


class _Y:
    """Small helper that type-checks YAML values and reports the key's line."""

    def __init__(self, label: str) -> None:
        self.label = label

    def err(self, d: dict, key: str, message: str) -> DataValidationError:
        return DataValidationError(self.label, _line(d, key), key, message)

    def mapping(self, obj: Any, where: str, line: int, column: str) -> dict:
        if not isinstance(obj, dict):
            raise DataValidationError(self.label, line, column, f"{where} must be a mapping (key: value)")
        return obj

    def keys(self, d: dict, spec: tuple[tuple[str, ...], tuple[str, ...]], where: str) -> None:
        required, optional = spec
        for k in _public_keys(d):
            if k not in required and k not in optional:
                raise DataValidationError(
                    self.label,
                    _line(d, k),
                    str(k),
                    f"unknown key '{k}' in {where}; allowed: {', '.join([*required, *optional])}",
                )
        for k in required:
            if k not in d:
                raise DataValidationError(self.label, _line(d), k, f"missing required key '{k}' in {where}")

    def text(self, d: dict, key: str, *, required: bool = True, ident: bool = False) -> str:
        v = d.get(key)
        if v is None:
            if required:
                raise self.err(d, key, f"'{key}' is required and must be text")
            return ""
        if isinstance(v, bool) or isinstance(v, (dict, list)):
            raise self.err(d, key, f"'{key}' must be text, got {type(v).__name__}")
        s = str(v).strip()
        if required and not s:
            raise self.err(d, key, f"'{key}' must not be empty")
        if ident and not _ID_RE.match(s):
            raise self.err(d, key, f"'{s}' is not a valid identifier (letters, digits, _ . -; no spaces)")
        return " ".join(s.split())  # one line: tabs/newlines would break the TSV outputs

    def number(self, d: dict, key: str, *, positive: bool = True) -> float:
        x = parse_float(d.get(key), self.label, _line(d, key), key, positive=positive, what=f"'{key}'")
        assert x is not None
        return x

    def integer(self, d: dict, key: str, *, allow_null: bool = True) -> int | None:
        v = d.get(key)
        if v is None and allow_null:
            return None
        return parse_int(v, self.label, _line(d, key), key, allow_na=allow_null, minimum=1)

    def items(self, d: dict, key: str) -> list[dict]:
        v = d.get(key)
        if not isinstance(v, list) or not v:
            raise self.err(d, key, f"'{key}' must be a non-empty list")
        out = []
        for item in v:
            if not isinstance(item, dict):
                raise self.err(d, key, f"every entry of '{key}' must be a mapping, got {item!r}")
            out.append(item)
        return out


#: a correction names its raw row by time_min; digitised times carry three decimals
CORRECTION_TIME_TOL = 5e-4


def _corrections(y: "_Y", d: dict) -> tuple[Correction, ...]:
    """The ``corrections:`` list of a files: entry (may be absent)."""
    if "corrections" not in d:
        return ()
    out: list[Correction] = []
    for c in y.items(d, "corrections"):
        y.keys(c, _CORRECTION_KEYS, "a corrections: entry")
        t = parse_float(c.get("time_min"), y.label, _line(c, "time_min"), "time_min", what="'time_min'")
        exclude = c.get("exclude", False)
        if not isinstance(exclude, bool):
            raise y.err(c, "exclude", f"'exclude' must be true or false, got {exclude!r}")
        has_set = "set_time_min" in c
        if exclude == has_set:
            raise DataValidationError(y.label, _line(c), "set_time_min",
                                      "a correction needs exactly one of 'set_time_min: <min>' and 'exclude: true'")
        new = (parse_float(c.get("set_time_min"), y.label, _line(c, "set_time_min"), "set_time_min",
                           what="'set_time_min'") if has_set else None)
        if any(abs(o.time_min - t) < CORRECTION_TIME_TOL for o in out):
            raise y.err(c, "time_min", f"two corrections name the row at {t:g} min")
        out.append(Correction(time_min=t, set_time_min=new, exclude=exclude, reason=y.text(c, "reason"),
                              line=_line(c)))
    return tuple(out)


def read_dataset_yaml(dataset_dir: Path, label: str) -> DatasetSpec:
    """Read and structurally validate ``dataset.yaml`` (``label`` is the path shown in errors)."""
    doc = load_yaml_with_lines(dataset_dir / "dataset.yaml", label)
    y = _Y(label)
    doc = y.mapping(doc, "dataset.yaml", 1, "dataset_id")
    y.keys(doc, (_TOP_KEYS_REQUIRED, _TOP_KEYS_OPTIONAL), "dataset.yaml")
    dataset_id = y.text(doc, "dataset_id", ident=True)
    if dataset_id != dataset_dir.name:
        raise y.err(doc, "dataset_id", f"dataset_id '{dataset_id}' must equal the folder name '{dataset_dir.name}'")

    def unique(kind: str, entries: list[tuple[str, dict]]) -> None:
        seen: dict[str, int] = {}
        for ident, d in entries:
            if ident in seen:
                raise DataValidationError(
                    label, _line(d, "id"), "id", f"duplicate {kind} id '{ident}' (first at line {seen[ident]})"
                )
            seen[ident] = _line(d, "id")

    citations: dict[str, CitationSpec] = {}
    cit_items = y.items(doc, "citations")
    for d in cit_items:
        y.keys(d, _CITATION_KEYS, "a citation")
    unique("citation", [(y.text(d, "id", ident=True), d) for d in cit_items])
    for d in cit_items:
        year = parse_int(d.get("year"), label, _line(d, "year"), "year", minimum=1800)
        assert year is not None
        c = CitationSpec(
            id=y.text(d, "id", ident=True),
            authors=y.text(d, "authors"),
            journal=y.text(d, "journal"),
            year=year,
            title=y.text(d, "title", required=False),
            volume_pages=y.text(d, "volume_pages", required=False),
            doi_or_url=y.text(d, "doi_or_url", required=False),
            line=_line(d),
        )
        citations[c.id] = c

    groups: dict[str, GroupSpec] = {}
    g_items = y.items(doc, "groups")
    for d in g_items:
        y.keys(d, _GROUP_KEYS, "a group")
    unique("group", [(y.text(d, "id", ident=True), d) for d in g_items])
    for d in g_items:
        g = GroupSpec(y.text(d, "id", ident=True), y.integer(d, "n"), y.text(d, "description", required=False), _line(d))
        groups[g.id] = g

    subjects: dict[str, SubjectSpec] = {}
    s_items = y.items(doc, "subjects")
    for d in s_items:
        y.keys(d, _SUBJECT_KEYS, "a subject")
    unique("subject", [(y.text(d, "id", ident=True), d) for d in s_items])
    for d in s_items:
        group = y.text(d, "group", ident=True)
        if group not in groups:
            raise y.err(d, "group", f"group '{group}' is not listed under groups: ({', '.join(groups)})")
        n = y.integer(d, "n") if "n" in d else groups[group].n
        s = SubjectSpec(
            id=y.text(d, "id", ident=True),
            group=group,
            n=n,
            body_weight_kg=y.number(d, "body_weight_kg"),
            bsa_m2=y.number(d, "bsa_m2"),
            covariate_basis=y.text(d, "covariate_basis"),
            line=_line(d),
        )
        subjects[s.id] = s

    conditions: dict[str, ConditionSpec] = {}
    c_items = y.items(doc, "conditions")
    for d in c_items:
        y.keys(d, _CONDITION_KEYS, "a condition")
    unique("condition", [(y.text(d, "id", ident=True), d) for d in c_items])
    for d in c_items:
        subject = y.text(d, "subject", ident=True)
        if subject not in subjects:
            raise y.err(d, "subject", f"subject '{subject}' is not listed under subjects: ({', '.join(subjects)})")
        mode = y.text(d, "insulin_mode")
        if mode not in INSULIN_MODES:
            raise y.err(d, "insulin_mode", f"insulin_mode '{mode}' must be one of {', '.join(INSULIN_MODES)}")
        c = ConditionSpec(
            id=y.text(d, "id", ident=True),
            subject=subject,
            protocol_file=y.text(d, "protocol_file"),
            insulin_mode=mode,
            notes=y.text(d, "notes", required=False),
            line=_line(d),
            key_lines=dict(d.get(_KEY_LINES, {})),
        )
        conditions[c.id] = c

    files: list[FileSpec] = []
    seen_paths: dict[str, int] = {}
    for d in y.items(doc, "files"):
        y.keys(d, _FILE_KEYS, "a files: entry")
        path = y.text(d, "path")
        if not path.startswith("raw/") or ".." in Path(path).parts:
            raise y.err(d, "path", f"path '{path}' must be a file inside raw/ (e.g. raw/glucose.csv)")
        if path in seen_paths:
            raise y.err(d, "path", f"raw file '{path}' is listed twice (first at line {seen_paths[path]})")
        seen_paths[path] = _line(d, "path")
        cit = y.text(d, "citation", required=False, ident=True) if "citation" in d else ""
        if not cit:
            if len(citations) != 1:
                raise DataValidationError(
                    label, _line(d), "citation", "'citation' (a citation id) is required when several citations exist"
                )
            cit = next(iter(citations))
        elif cit not in citations:
            raise y.err(d, "citation", f"citation '{cit}' is not listed under citations: ({', '.join(citations)})")
        cond = y.text(d, "condition", required=False, ident=True) if "condition" in d else None
        if cond is not None and cond not in conditions:
            raise y.err(d, "condition", f"condition '{cond}' is not listed under conditions: ({', '.join(conditions)})")
        files.append(
            FileSpec(
                path=path,
                observable_id=y.text(d, "observable_id", required=False) or None,
                unit=y.text(d, "unit", required=False) or None,
                condition=cond,
                citation=cit,
                figure_or_table=y.text(d, "figure_or_table"),
                how_obtained=y.text(d, "how_obtained", required=False) or y.text(doc, "how_obtained"),
                measurement_error=y.text(d, "measurement_error", required=False),
                n=y.integer(d, "n") if "n" in d else None,
                line=_line(d),
                key_lines=dict(d.get(_KEY_LINES, {})),
                corrections=_corrections(y, d),
            )
        )
    return DatasetSpec(
        dataset_id=dataset_id,
        title=y.text(doc, "title"),
        how_obtained=y.text(doc, "how_obtained"),
        citations=citations,
        groups=groups,
        subjects=subjects,
        conditions=conditions,
        files=files,
        label=label,
        raw=doc,
    )


# ------------------------------------------------------------------------------------------------- raw CSV
@dataclass(frozen=True)
class RawTable:
    label: str
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number, column -> cell text)


def read_raw_csv(path: Path, label: str) -> RawTable:
    """Read a comma-separated raw file.

    The first non-blank line that does not start with ``#`` is the header; blank lines and ``#`` comment lines
    are skipped but still counted, so reported rows are the physical line numbers.  Cells are stripped.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataValidationError(label, 1, "*", "file does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(label, 1, "*", f"not UTF-8 text ({exc.reason})") from None
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cells = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        except csv.Error as exc:
            raise DataValidationError(label, lineno, "*", f"cannot parse CSV line: {exc}") from None
        cells = [c.strip() for c in cells]
        if header is None:
            if "\t" in line and len(cells) == 1:
                raise DataValidationError(label, lineno, cells[0][:20], "file is tab separated; raw files must be CSV")
            header = cells
            continue
        if len(cells) != len(header):
            col = header[len(cells)] if len(cells) < len(header) else f"<extra field {len(cells)}>"
            raise DataValidationError(
                label, lineno, col, f"row has {len(cells)} fields but the header has {len(header)}"
            )
        rows.append((lineno, dict(zip(header, cells))))
    if header is None:
        raise DataValidationError(label, 1, "time_min", "file is empty (no header and no data rows)")
    return RawTable(label=label, header=header, rows=rows)


# ----------------------------------------------------------------------------------------------- SHA256SUMS
_SUM_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sha256sums(path: Path, label: str) -> dict[str, tuple[str, int]]:
    """Parse a ``sha256sum``-format file: ``<hex digest>  raw/<file>`` per line -> {path: (digest, line)}."""
    if not path.is_file():
        raise DataValidationError(
            label, 1, "sha256", "SHA256SUMS is missing; create it with `sha256sum raw/* > SHA256SUMS` in the dataset folder"
        )
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _SUM_RE.match(line.rstrip())
        if not m:
            raise DataValidationError(label, lineno, "sha256", "expected '<64 hex digits>  raw/<file>' (sha256sum format)")
        digest, name = m.group(1).lower(), m.group(2).strip()
        if name.startswith("./"):
            name = name[2:]
        if name in out:
            raise DataValidationError(label, lineno, "file", f"'{name}' is listed twice (first at row {out[name][1]})")
        out[name] = (digest, lineno)
    return out


# ------------------------------------------------------------------------------------------------ protocols
_CLOCK_RE = re.compile(r"^day\s+(\d+)\s+(\d{1,2}):(\d{2})$")


def protocol_time_min(value: Any) -> float | None:
    """Minutes from a protocol time (number of minutes or ``"day D HH:MM"``); None if unparseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _CLOCK_RE.match(value.strip())
        if m:
            d, hh, mm = (int(g) for g in m.groups())
            if hh < 24 and mm < 60:
                return d * 1440.0 + hh * 60.0 + mm
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_protocol_header(path: Path) -> dict | None:
    """Load a protocol YAML (plain dict, no line info); None when it cannot be parsed as a mapping."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None
