"""save_figure / save_table write complete files atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from myoglucose.report import save_figure, save_table  # noqa: E402


def _small_figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_title("t")
    return fig


def test_save_figure_all_formats(tmp_path):
    paths = save_figure(_small_figure(), tmp_path / "figs" / "ppc", dpi=50)
    assert [p.name for p in paths] == ["ppc.svg", "ppc.pdf", "ppc.png"]
    assert paths[0].read_text().lstrip().startswith("<?xml") and "<svg" in paths[0].read_text()
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert paths[2].read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["ppc.pdf", "ppc.png", "ppc.svg"]


def test_save_figure_is_reproducible_and_keeps_dotted_stems(tmp_path):
    fig = _small_figure()
    (a,) = save_figure(fig, tmp_path / "fig.v2", formats=("svg",))
    first = a.read_bytes()
    (b,) = save_figure(fig, tmp_path / "fig.v2", formats=("svg",))
    assert a.name == "fig.v2.svg" and b == a
    assert b.read_bytes() == first


def test_constrained_layout_runs_once_and_is_restored(tmp_path, monkeypatch):
    """The layout engine lays the figure out for the first format; the other formats keep those positions (one
    layout instead of three), and the figure keeps its engine afterwards, also when a write fails."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    fig = Figure(figsize=(3, 2), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax in axes.flat:
        ax.set_ylabel("a long label [unit]")
    engine = fig.get_layout_engine()
    calls = []
    real = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", lambda self, f: calls.append(1) or real(self, f))
    save_figure(fig, tmp_path / "f", dpi=50)
    assert len(calls) == 1 and fig.get_layout_engine() is engine
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "g", formats=("svg", "nosuchformat"))
    assert fig.get_layout_engine() is engine


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_figure(_small_figure(), tmp_path / "x", formats=("nosuchformat",))
    assert list(tmp_path.iterdir()) == []


def test_save_table(tmp_path):
    df = pd.DataFrame({"parameter": ["k_ins[obese]", "v_max"], "r_hat": [1.001, 1.2]})
    paths = save_table(df, tmp_path / "tables" / "diag", caption="Diagnostics", label="tab:diag")
    assert [p.name for p in paths] == ["diag.csv", "diag.tex"]
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), df)
    tex = paths[1].read_text()
    assert "\\caption{Diagnostics}" in tex and "\\label{tab:diag}" in tex
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["diag.csv", "diag.tex"]
