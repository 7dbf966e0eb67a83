"""The command line as a user meets it: help, clear errors on malformed input, no partial outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "myoglucose.cli"]


def run(*args, cwd=ROOT):
    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize("cmd", ["prepare", "combine", "simulate", "fit", "diagnose", "predict", "report", "behaviours",
                                 "compare", "simulate-cohort"])
def test_every_subcommand_has_help(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and "--" in r.stdout


@pytest.fixture()
def tidy(tmp_path):
    out = tmp_path / "tidy"
    r = run("prepare", "--dataset-dir", ROOT / "data/katz2000_clamp", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture()
def config(tmp_path):
    import yaml

    cfg = {"datasets": ["katz2000_clamp"], "models": ["core"],
           "sampler": {"chains": 1, "warmup": 5, "samples": 5, "init": "median"}, "device": "cpu"}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _corrupt(tidy: Path, row: int, column: str, value: str) -> None:
    f = tidy / "measurements.tsv"
    df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    df.loc[row - 2, column] = value
    df.to_csv(f, sep="\t", index=False)


@pytest.mark.parametrize("column, value, words", [
    ("value", "abc", "value"),
    ("value", "-5", "value"),
    ("observable_id", "glucose_typo", "observable_id"),
    ("unit", "mmol/L", "unit"),
])
def test_fit_refuses_malformed_table(tidy, config, tmp_path, column, value, words):
    _corrupt(tidy, 7, column, value)
    out = tmp_path / "fit" / "posterior.nc"
    r = run("fit", "--tidy-dir", tidy, "--model", ROOT / "models/core", "--config", config, "--out", out)
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith("error:") and "measurements.tsv" in msg and "row 7" in msg and words in msg, msg
    assert not out.exists() and not any(out.parent.glob("*")) if out.parent.exists() else True


def test_prepare_refuses_malformed_raw_file_without_partial_output(tmp_path):
    d = tmp_path / "katz2000_clamp"
    shutil.copytree(ROOT / "data/katz2000_clamp", d)
    raw = sorted((d / "raw").glob("glucose_*.csv"))[0]
    lines = raw.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",not-a-number"
    raw.write_text("\n".join(lines) + "\n")
    # keep the checksum in step so the *content* error is the one reported
    import hashlib

    sums = (d / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    sums = [f"{digest}  {s.split()[1]}" if s.split()[1].endswith(raw.name) else s for s in sums]
    (d / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    out = tmp_path / "tidy"
    r = run("prepare", "--dataset-dir", d, "--out-dir", out)
    assert r.returncode != 0
    msg = r.stderr.strip().splitlines()[-1]
    assert raw.name in msg and "row 4" in msg and "value" in msg, msg
    assert not out.exists() or not any(out.iterdir())


def test_bad_config_is_refused(tidy, tmp_path):
    import yaml

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"datasets": ["katz2000_clamp"], "models": ["core"], "sampler": {"chains": 0}}))
    r = run("fit", "--tidy-dir", tidy, "--model", ROOT / "models/core", "--config", p, "--out", tmp_path / "x.nc")
    assert r.returncode == 2 and "sampler.chains" in r.stderr
    p.write_text(yaml.safe_dump({"datasets": ["katz2000_clamp"], "models": ["core"], "samplr": {}}))
    r = run("fit", "--tidy-dir", tidy, "--model", ROOT / "models/core", "--config", p, "--out", tmp_path / "x.nc")
    assert r.returncode == 2 and "samplr" in r.stderr


def test_simulate_impossible_protocol(tmp_path):
    prot = tmp_path / "p.yaml"
    prot.write_text("name: bad\nend: 100\nevents:\n  - {type: exercise, start: 90, duration_min: 30, intensity: 0.5}\n")
    r = run("simulate", "--model", ROOT / "models/full", "--protocol", prot, "--out", tmp_path / "s.csv")
    assert r.returncode == 2 and "p.yaml" in r.stderr and "event 1" in r.stderr
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_simulate_writes_units(tmp_path):
    out = tmp_path / "sim.csv"
    r = run("simulate", "--model", ROOT / "models/full", "--protocol", ROOT / "protocols/scenarios/clamp_40.yaml",
            "--out", out, "--points", "61")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert "glucose_plasma [mg/dL]" in df.columns and "gir [mg/kg/min]" in df.columns and "glut4_pm [1]" in df.columns
    assert df["gir [mg/kg/min]"].iloc[-1] > 3.0


@pytest.mark.slow
def test_simulate_cohort_feeds_fit_format(tmp_path):
    out = tmp_path / "cohort"
    r = run("simulate-cohort", "--model", ROOT / "models/core", "--protocol", ROOT / "protocols/scenarios/clamp_40.yaml",
            "--n", "4", "--seed", "3", "--groups", "a,b", "--observables", "glucose_plasma,gir", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    from myoglucose.data import read_tables

    t = read_tables(out, ROOT)
    assert set(t.measurements["subject_id"]) == {"s0001", "s0002", "s0003", "s0004"}
    truth = pd.read_csv(out / "true_parameters.tsv", sep="\t")
    assert set(truth["parameterId"]) == {"akt_ec50", "gb", "glut4_capacity", "k_ins_int"}
    r2 = run("simulate-cohort", "--model", ROOT / "models/core", "--protocol", ROOT / "protocols/scenarios/clamp_40.yaml",
             "--n", "4", "--seed", "3", "--groups", "a,b", "--observables", "glucose_plasma,gir", "--out-dir",
             tmp_path / "again")
    assert r2.returncode == 0
    assert (out / "measurements.tsv").read_text() == (tmp_path / "again" / "measurements.tsv").read_text()


@pytest.mark.parametrize("preset, expected", [(None, "3"), ("0", "0")])
def test_cli_hides_the_xla_compiler_log_unless_asked(preset, expected) -> None:
    """Importing the CLI sets TF_CPP_MIN_LOG_LEVEL=3 before jaxlib loads (XLA's simplifier floods fit logs with
    harmless ERROR lines), unless the user set it (0 shows XLA's C++ log when debugging)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if preset is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = preset
    out = subprocess.run([sys.executable, "-c", "import os, sys, myoglucose.cli; "
                          "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'jaxlib' in sys.modules)"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [expected, "False"]
