"""config/test.yaml through a real SLURM (snakemake-executor-plugin-slurm) with .test/profiles/slurm-local.

Needs a cluster where that profile fits: account testacct, partitions debug and gpu (one GPU), as set up by
../shared/tools/slurm-local-up.sh (which .ci/run starts when it runs as root). Skipped when `sinfo` is missing or fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_workflow import FIGURE_NAMES, FIGURES, FIT, STAGES, copy_workflow, snakemake

pytestmark = pytest.mark.slurm


def _sinfo_works() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _sinfo_works(), reason="no working SLURM (sinfo missing or failing)")
def test_test_config_runs_through_slurm(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    # `timeout`: when the plugin's status query fails it waits forever and ignores SIGTERM (docs/workflow.md).
    res = snakemake(
        workdir,
        "--profile", ".test/profiles/slurm-local",
        "--configfile", "config/test.yaml",
        timeout=None,
        wrap=["timeout", "-k", "10", "1500"],
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]

    for path in (
        f"{FIT}/posterior.nc",
        f"{FIT}/diagnostics.tsv",
        f"{FIT}/predictive.nc",
        *(f"{FIGURES}/{name}.svg" for name in FIGURE_NAMES),
        "results/figures/core/behaviours.svg",
    ):
        assert (workdir / path).is_file(), path

    # Every job went through sbatch and sacct records it COMPLETED.
    run_id = re.search(r"SLURM run ID: (\S+)", out)
    assert run_id, out[-8000:]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) >= len(STAGES), out[-8000:]
    sacct = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(submitted), "-o", "JobID,JobName,State,Account"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [line.split("|") for line in sacct.splitlines() if line.strip()]
    assert sorted(r[0] for r in rows) == sorted(submitted), sacct
    assert all(r[1] == run_id[1] and r[2] == "COMPLETED" and r[3] == "testacct" for r in rows), sacct
