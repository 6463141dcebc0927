"""File input and output: atomic writes and text inputs with errors written for a person.

Writes go to a temporary name in the same directory, then are renamed: a crash mid-write
leaves either the old file (or directory) or the new one, never half of either.
"""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lmforge.errors import LmforgeError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path`, with the
    permissions a plain `open(path, "w")` would give it (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_directory(path: str | Path, write: Callable[[Path], None], force: bool = False
                    ) -> None:
    """Call `write(tmp_dir)` on a fresh temporary directory beside `path`, then rename it onto
    `path`. An existing non-empty `path` is an error unless `force`; then it is replaced only
    once the new directory is complete (never mixed with the old files)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LmforgeError(f"{path} exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not force:
        names = sorted(p.name for p in path.iterdir())
        raise LmforgeError(f"{path} is not empty (it holds {', '.join(names[:3])}"
                           f"{', …' if len(names) > 3 else ''}); choose a new directory, or "
                           "pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the directory keeps the umask's permissions, not 0700
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    old = None
    try:
        write(tmp)
        if path.exists():  # rename(2) cannot replace a non-empty directory: move it aside
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old / path.name, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_text(path: str | Path, what: str = "") -> str:
    """The whole text of a UTF-8 file (gzip when it ends in .gz). `what` (such as "--input")
    starts the message of a missing file, a directory or bytes that are not UTF-8, each said
    with how to fix it."""
    path = Path(path)
    where = f"{what} {path}".strip()
    if path.is_dir():
        txt = sorted(path.glob("*.txt"))[:1]
        hint = f" such as {txt[0]}" if txt else ""
        raise LmforgeError(f"{where} is a directory; give one UTF-8 text file{hint}")
    if not path.is_file():
        raise LmforgeError(f"{where}: no such file; give a UTF-8 text file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "convert it first, e.g. with iconv -f LATIN1 -t UTF-8") from None
