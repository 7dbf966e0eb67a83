"""Bad-input corpus at the command line (issue #9): every malformed config, protocol, parameter table or data file
gives exit status 2, one line ``error: <file>: ...`` that names the problem, no traceback and no output file.

The library-level checks behind these (exact row and column numbers, every rejection class of `prepare`) are in
test_data_validation.py, test_protocol.py, test_spec.py and test_cli.py; this file checks what a user of the
command line sees. Commands run in-process (typer's CliRunner) and stop before any JAX compilation, so the whole
corpus takes seconds.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from myoglucose.cli import app

ROOT = Path(__file__).resolve().parents[1]
GOOD_CONFIG = {"datasets": ["katz2000_clamp"], "models": ["core"], "device": "cpu",
               "sampler": {"chains": 1, "warmup": 5, "samples": 5, "init": "median"}}


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stderr


def assert_refused(code: int, err: str, *words: str) -> str:
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def tidy(tmp_path_factory):
    from myoglucose.data.prepare import prepare_to_dir

    out = tmp_path_factory.mktemp("tidy") / "katz2000_clamp"
    prepare_to_dir(ROOT / "data/katz2000_clamp", out, ROOT)
    return out


def fit_with(tidy: Path, tmp_path: Path, config: Path | None = None, model: Path = ROOT / "models/core",
             tidy_dir: Path | None = None) -> tuple[int, str]:
    if config is None:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(GOOD_CONFIG))
    out = tmp_path / "fit" / "posterior.nc"
    code, err = cli("fit", "--tidy-dir", tidy_dir or tidy, "--model", model, "--config", config, "--out", out)
    assert not out.exists() and not (tmp_path / "fit" / "posterior.nc.ckpt").exists()
    return code, err


# ------------------------------------------------------------------------------------------------------ configs
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("overlay, words", [
    ({"colour": "blue"}, ["top level", "'colour' was unexpected"]),                       # unknown key
    ({"sampler": {"warmpu": 10}}, ["sampler", "'warmpu' was unexpected"]),                # unknown nested key
    ({"sampler": {"samples": "many"}}, ["sampler.samples", "not of type 'integer'"]),     # wrong type
    ({"solver": {"rtol": "tight"}}, ["solver.rtol", "not of type 'number'"]),             # wrong type
    ({"sampler": {"dense_mass": "yes"}}, ["sampler.dense_mass", "not of type 'boolean'"]),
    ({"sampler": {"warmup": 0}}, ["sampler.warmup", "less than the minimum of 1"]),      # impossible settings
    ({"sampler": {"target_accept": 1.0}}, ["sampler.target_accept", "1.0"]),
    ({"sampler": {"max_tree_depth": 40}}, ["sampler.max_tree_depth", "maximum of 15"]),
    ({"sampler": {"checkpoint_every": -1}}, ["sampler.checkpoint_every", "minimum of 0"]),
    ({"sampler": {"init": "random"}}, ["sampler.init", "'random' is not one of"]),
    ({"solver": {"max_steps": 3}}, ["solver.max_steps", "minimum of 16"]),
    ({"device": "tpu"}, ["device", "'tpu' is not one of"]),
])
def test_bad_config(tidy, tmp_path, overlay, words):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_merge(GOOD_CONFIG, overlay)))
    assert_refused(*fit_with(tidy, tmp_path, p), "bad.yaml", *words)


@pytest.mark.parametrize("text, words", [
    ("datasets: [katz2000_clamp\nmodels: [core]\n", ["invalid YAML"]),
    ("- a\n- b\n", ["must be a mapping"]),
    ("models: [core]\n", ["'datasets' is a required property"]),
])
def test_malformed_config_file(tidy, tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert_refused(*fit_with(tidy, tmp_path, p), "bad.yaml", *words)


def test_missing_config_file(tidy, tmp_path):
    assert_refused(*fit_with(tidy, tmp_path, tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_gpu_requested_without_a_gpu(tidy, tmp_path):
    """A config error found only when JAX starts (so in a fresh process)."""
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    p = tmp_path / "gpu.yaml"
    p.write_text(yaml.safe_dump({**GOOD_CONFIG, "device": "gpu"}))
    out = tmp_path / "posterior.nc"
    r = subprocess.run([sys.executable, "-m", "myoglucose.cli", "fit", "--tidy-dir", str(tidy), "--model",
                        str(ROOT / "models/core"), "--config", str(p), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={"MYOGLUCOSE_ROOT": str(ROOT),
                                                                         **__import__("os").environ})
    assert_refused(r.returncode, r.stderr, "device: gpu requested but JAX found no GPU")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("events, end, words", [
    ([{"type": "exercise", "start": 0, "duration_min": 60, "intensity": 0.5},
      {"type": "exercise", "start": 30, "duration_min": 60, "intensity": 0.7}], 200, ["event 2", "overlaps event 1"]),
    ([{"type": "exercise", "start": 10, "duration_min": -5, "intensity": 0.5}], 200,
     ["event 1", "duration_min", "must be > 0"]),
    ([{"type": "exercise", "start": 10, "duration_min": 0, "intensity": 0.5}], 200, ["event 1", "must be > 0"]),
    ([{"type": "insulin_infusion", "start": 0, "duration_min": 60, "rate": 40, "unit": "U/h"}], 200,
     ["event 1", "unknown insulin unit 'U/h'"]),
    ([{"type": "glucose_bolus", "start": 0, "duration_min": 2, "dose": 0.3, "unit": "lb"}], 200,
     ["event 1", "unknown glucose dose unit 'lb'"]),
    ([{"type": "exercise", "start": 250, "duration_min": 5, "intensity": 0.5}], 200,
     ["event 1", "after the protocol end"]),
    ([{"type": "exercise", "start": 190, "duration_min": 60, "intensity": 0.5}], 200,
     ["event 1", "ends at 250", "after the protocol end (200"]),
    ([{"type": "exercise", "start": "day 0 25:00", "duration_min": 5, "intensity": 0.5}], 3000,
     ["event 1", "invalid clock time"]),
    ([{"type": "exercise", "start": -10, "duration_min": 5, "intensity": 0.5}], 200, ["before the origin"]),
    ([], -5, ["field 'end'", "must be after the origin"]),
])
def test_bad_protocol(tmp_path, events, end, words):
    p = tmp_path / "bad_protocol.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "end": end, "events": events}))
    out = tmp_path / "sim.csv"
    code, err = cli("simulate", "--model", ROOT / "models/core", "--protocol", p, "--out", out)
    assert_refused(code, err, "bad_protocol.yaml", *words)
    assert not out.exists()


def test_protocol_with_yaml_syntax_error(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nend: 100\nevents:\n  - {type: exercise, start: 0\n")
    code, err = cli("simulate", "--model", ROOT / "models/core", "--protocol", p, "--out", tmp_path / "s.csv")
    assert_refused(code, err, "broken.yaml", "row 5", "invalid YAML")


CLAMP = ROOT / "protocols/scenarios/clamp_40.yaml"


def test_parameter_overrides_with_unknown_parameter(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("k_nonexistent: 1.0\n")
    code, err = cli("simulate", "--model", ROOT / "models/core", "--protocol", CLAMP, "--params", p,
                    "--out", tmp_path / "s.csv")
    assert_refused(code, err, "params.yaml", "unknown parameter 'k_nonexistent'")
    p.write_text("k_ins_int: [1\n")
    code, err = cli("simulate", "--model", ROOT / "models/core", "--protocol", CLAMP, "--params", p,
                    "--out", tmp_path / "s.csv")
    assert_refused(code, err, "params.yaml", "invalid YAML")
    assert not (tmp_path / "s.csv").exists()


# ------------------------------------------------------------------------------------------- parameter tables
def _models_with(tmp_path: Path, table: str, edit) -> Path:
    """models/full and models/core copied to tmp_path/models, with ``edit(df)`` applied to full/<table>;
    returns the core variant (whose parent is full), the one the fit uses."""
    d = tmp_path / "models"
    for v in ("full", "core"):
        shutil.copytree(ROOT / "models" / v, d / v)
    shutil.copy(ROOT / "models/references.bib", d / "references.bib")
    f = d / "full" / table
    df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(f, sep="\t", index=False)
    return d / "core"


def _set(row, col, value):
    return lambda df: df.loc.__setitem__((row, col), value)


@pytest.mark.parametrize("table, edit, words", [
    ("parameters.tsv", _set(3, "unit", ""), ["row 5", "column 'unit'", "has no unit"]),
    ("parameters.tsv", _set(3, "unit", "furlong"), ["row 5", "column 'unit'", "differs from the equations"]),
    ("parameters.tsv", _set(3, "lowerBound", "1e9"), ["row 5", "column 'lowerBound'", "lower bound"]),
    ("parameters.tsv", _set(3, "priorLoc", "1e9"), ["row 5", "column 'priorLoc'", "outside the bounds"]),
    ("parameters.tsv", _set(3, "parameterId", "k_unknown"), ["row 5", "column 'parameterId'",
                                                              "unknown parameter 'k_unknown'"]),
    ("parameters.tsv", _set(3, "priorScale", "-1"), ["row 5", "column 'priorScale'", "must be > 0"]),
    ("parameters.tsv", _set(3, "upperBound", "inf"), ["row 5", "column 'upperBound'", "finite"]),
    ("parameters.tsv", lambda df: df.pop("unit"), ["row 1", "missing column"]),
    ("observables.tsv", _set(0, "noiseDistribution", "cauchy"), ["row 2", "column 'noiseDistribution'",
                                                                  "unknown noise model"]),
    ("observables.tsv", _set(0, "observableId", "glucose_typo"), ["row 2", "unknown observable"]),
])
def test_bad_parameter_or_observable_table(tidy, tmp_path, table, edit, words):
    model = _models_with(tmp_path, table, edit)
    assert_refused(*fit_with(tidy, tmp_path, model=model), f"full/{table}", *words)


@pytest.mark.parametrize("text, words", [
    ("id: core\nparent: full\noverrides: {glut4_capacity: {estimate: 1\n", ["row 4", "invalid YAML"]),
    ("id: core\nparent: full\ncolour: red\n", ["unknown key(s) ['colour']"]),
    ("id: core\nparent: full\noverrides: {k_unknown: {estimate: 1}}\n", ["overrides.k_unknown",
                                                                          "unknown parameter 'k_unknown'"]),
])
def test_bad_model_yaml(tidy, tmp_path, text, words):
    model = _models_with(tmp_path, "parameters.tsv", lambda df: None)
    (model / "model.yaml").write_text(text)
    assert_refused(*fit_with(tidy, tmp_path, model=model), "core/model.yaml", *words)


# ---------------------------------------------------------------------------------------------------------- data
def _dataset_copy(tmp_path: Path) -> Path:
    d = tmp_path / "katz2000_clamp"
    shutil.copytree(ROOT / "data/katz2000_clamp", d)
    return d


def _edit_raw(d: Path, lineno: int, text: str) -> str:
    raw = sorted((d / "raw").glob("glucose_*.csv"))[0]
    lines = raw.read_text().splitlines()
    lines[lineno - 1] = text
    raw.write_text("\n".join(lines) + "\n")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  raw/{p.name}" for p in sorted((d / "raw").iterdir())]
    (d / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return raw.name


@pytest.mark.parametrize("value, words", [
    ("nan", ["not finite"]), ("inf", ["not finite"]), ("-inf", ["not finite"]), ("NaN", ["not finite"]),
    ("-3", ["negative"]), ("abc", ["value"]), ("NA", ["missing"]),
])
def test_prepare_refuses_bad_values(tmp_path, value, words):
    d = _dataset_copy(tmp_path)
    first = (sorted((d / "raw").glob("glucose_*.csv"))[0]).read_text().splitlines()[6].split(",")[0]
    name = _edit_raw(d, 7, f"{first},{value}")
    out = tmp_path / "tidy"
    code, err = cli("prepare", "--dataset-dir", d, "--out-dir", out)
    assert_refused(code, err, name, "row 7", "column 'value'", *words)
    assert not out.exists() or not any(out.iterdir())


def test_prepare_refuses_non_finite_time(tmp_path):
    d = _dataset_copy(tmp_path)
    name = _edit_raw(d, 7, "inf,89.2")
    code, err = cli("prepare", "--dataset-dir", d, "--out-dir", tmp_path / "tidy")
    assert_refused(code, err, name, "row 7", "column 'time_min'", "not finite")


def test_prepare_refuses_unknown_unit(tmp_path):
    d = _dataset_copy(tmp_path)
    y = d / "dataset.yaml"
    text = y.read_text()
    assert "unit: mg/dL" in text
    y.write_text(text.replace("unit: mg/dL", "unit: mg/decilitre", 1))
    code, err = cli("prepare", "--dataset-dir", d, "--out-dir", tmp_path / "tidy")
    assert_refused(code, err, "dataset.yaml", "mg/decilitre")


def test_prepare_refuses_changed_raw_file(tmp_path):
    d = _dataset_copy(tmp_path)
    raw = sorted((d / "raw").glob("glucose_*.csv"))[0]
    raw.write_text(raw.read_text() + "999,90\n")  # checksum no longer matches
    code, err = cli("prepare", "--dataset-dir", d, "--out-dir", tmp_path / "tidy")
    assert_refused(code, err, raw.name, "sha256")


@pytest.mark.parametrize("column, value, words", [
    ("value", "nan", ["row 4", "column 'value'", "not finite"]),
    ("value", "inf", ["row 4", "column 'value'", "not finite"]),
    ("time_min", "-inf", ["row 4", "column 'time_min'", "not finite"]),
])
def test_fit_refuses_non_finite_tidy_values(tidy, tmp_path, column, value, words):
    """Tidy tables edited after `prepare` are validated again by `fit`."""
    t = tmp_path / "tidy"
    shutil.copytree(tidy, t)
    f = t / "measurements.tsv"
    df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    df.loc[2, column] = value
    df.to_csv(f, sep="\t", index=False)
    assert_refused(*fit_with(tidy, tmp_path, tidy_dir=t), "measurements.tsv", *words)


def test_fit_refuses_missing_tidy_dir(tidy, tmp_path):
    assert_refused(*fit_with(tidy, tmp_path, tidy_dir=tmp_path / "nowhere"), "nowhere")
