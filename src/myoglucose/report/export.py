"""Writing report figures and tables: the only module of ``myoglucose.report`` that writes files.

Every file is written atomically: to a temporary file in the destination folder, then ``os.replace``d
onto the final name, so a reader (or Snakemake) never sees a half-written file.  Output is made
reproducible where matplotlib allows it (no creation dates in SVG/PDF, fixed SVG id salt).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from myoglucose.report.tables import to_latex

__all__ = ["atomic_write", "save_figure", "save_table"]

_METADATA = {
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
    "png": {},
}


def _target(stem: Path, ext: str) -> Path:
    # not Path.with_suffix: a stem such as "ppc.v2" must become "ppc.v2.svg", not "ppc.svg"
    return stem.parent / f"{stem.name}.{ext}"


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_figure(
    fig: Figure, stem: Path | str, formats: Iterable[str] = ("svg", "pdf", "png"), dpi: int = 300
) -> list[Path]:
    """Save ``fig`` as ``<stem>.<fmt>`` for each format; returns the written paths.

    The figure's layout engine (constrained layout) runs for the first format only; the later formats reuse the
    positions it found (the engine is restored afterwards). Laying out a figure of many panels costs more than
    rendering it (the pairs figure of 91 panels), and the positions do not depend on the output format."""
    stem = Path(stem)
    written = []
    engine = fig.get_layout_engine()
    try:
        for i, fmt in enumerate(formats):
            fmt = fmt.lower().lstrip(".")

            def write(tmp: str, fmt: str = fmt) -> None:
                with matplotlib.rc_context({"svg.hashsalt": "myoglucose"}):
                    fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))

            written.append(atomic_write(_target(stem, fmt), write))
            if i == 0 and engine is not None:
                fig.set_layout_engine("none")
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return written


def save_table(df: pd.DataFrame, stem: Path | str, caption: str, label: str) -> list[Path]:
    """Write ``<stem>.csv`` (no index) and ``<stem>.tex`` (see :func:`~myoglucose.report.tables.to_latex`)."""
    stem = Path(stem)
    tex = to_latex(df, caption=caption, label=label)

    def write_csv(tmp: str) -> None:
        df.to_csv(tmp, index=False)

    def write_tex(tmp: str) -> None:
        Path(tmp).write_text(tex, encoding="utf-8")

    return [atomic_write(_target(stem, "csv"), write_csv), atomic_write(_target(stem, "tex"), write_tex)]
