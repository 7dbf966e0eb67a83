"""Atomic file writes: the one place (with ``report.export`` and ``data.prepare``) where the package writes files.

Every output is written to a temporary file in its destination folder and renamed onto the final name with
``os.replace`` (atomic on POSIX file systems), so a reader, Snakemake or a later run never sees a half-written file:
a job killed at any moment leaves either the previous file, or no file, plus at most a hidden
``.<name>.<random>.tmp`` file that nothing takes for an output. Temporary names come from ``tempfile.mkstemp``,
so concurrent jobs never share one. The final file gets the usual permissions (``0o666`` less the umask), not
mkstemp's private ``0o600``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_path", "atomic_write", "write_text", "remove_tree", "yaml_error"]


def _umask() -> int:
    """The process umask, read without changing it where possible (os.umask(0) would briefly affect every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """Permissions of a newly created regular file (0o666 less the umask)."""
    return 0o666 & ~_umask()


def atomic_path(final: Path, suffix: str = "") -> Path:
    """A fresh, empty temporary file next to ``final`` (its folder is created). The caller renames or removes it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write(final: Path, write: Callable[[Path], None], suffix: str = "", fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``final``, then rename it onto ``final``.

    On any error (including KeyboardInterrupt) the temporary file is removed and ``final`` is left as it was.
    ``fsync=True`` also flushes the data to disk before the rename (for checkpoints, which must survive a crash
    of the machine, not only of the process).
    """
    final = Path(final)
    tmp = atomic_path(final, suffix)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_text(final: Path, text: str) -> Path:
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_tree(path: Path) -> None:
    """Remove a folder (checkpoints after a finished fit); a missing folder is fine."""
    shutil.rmtree(path, ignore_errors=True)


def yaml_error(path, exc) -> str:
    """One line for a YAML syntax error: ``<path>: row <r>, column <c>: invalid YAML: <problem>``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f": row {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or ["unreadable"])[0]
    return f"{path}{where}: invalid YAML: {problem}"
