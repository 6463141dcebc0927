"""The read_file tool: what the agent may see of the user's files, within `--allow` only.

    read_path("sales.csv", ["data/"])
    # 'sales.csv: CSV, 4 rows, columns: region (text), units (integer)\nregion,units\n...'

- Confinement: a relative path is looked up under each allowed directory in turn, an absolute
  one must lie under one of them; symbolic links are resolved first, so a link cannot lead
  outside. Anything else is refused with a message naming the allowed directories.
- CSV (and TSV) is summarised, not dumped: columns with inferred types (integer, number,
  text), the row count and the first SHOWN_ROWS rows, in the layout the training data
  shows (`agent/teach.py`'s `csv_observation`).
- Text, Markdown, HTML and PDF go through the retrieval package's reader
  (`rag.documents.read_document`: PDF text layer, HTML without tags); other files are read
  as UTF-8 text if they are text. Output is cut at MAX_CHARS characters (the context window
  of a small model is short) and says so.
- A directory is listed: sub-directories first with a slash, then files with their sizes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.rag.documents import KINDS, InputFile, read_document

MAX_CHARS = 4_000
MAX_BYTES = 20 * 2**20
SHOWN_ROWS = 20
SHOWN_ENTRIES = 100


def read_path(path: str, allow: Sequence[str | Path]) -> str:
    """The observation for reading `path` (a file's content or summary, or a listing)."""
    target = resolve_allowed(path, allow)
    if target.is_dir():
        return list_directory(path, target)
    if target.stat().st_size > MAX_BYTES:
        raise LmforgeError(f"{path} is {target.stat().st_size / 2**20:.1f} MiB, too large to "
                           f"read (at most {MAX_BYTES // 2**20} MiB)")
    suffix = target.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return summarize_csv(path, _text(target), "\t" if suffix == ".tsv" else ",")
    if suffix in KINDS:
        text = read_document(InputFile(target, path)).text
    else:
        text = _text(target)
    return _cut(text)


def resolve_allowed(path: str, allow: Sequence[str | Path]) -> Path:
    """`path` resolved (links followed) inside one of the allowed directories."""
    roots = [Path(a).resolve() for a in allow]
    if not roots:
        raise LmforgeError("no directory may be read; start the agent with --allow DIR")
    if not path.strip():
        raise LmforgeError("the path is empty; give a file or directory name")
    candidates = [Path(path)] if Path(path).is_absolute() else [r / path for r in roots]
    for c in candidates:
        resolved = c.resolve()
        if not any(resolved.is_relative_to(r) for r in roots):
            raise LmforgeError(f"{path} is outside the allowed directories "
                               f"({', '.join(map(str, roots))}); only files under them can be "
                               "read")
        if resolved.exists():
            return resolved
    raise LmforgeError(f"{path}: no such file or directory under "
                       f"{', '.join(map(str, roots))}")


def list_directory(shown: str, path: Path) -> str:
    entries = sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
    entries = [e for e in entries if not e.name.startswith(".")]
    lines = [f"{shown}: directory, {len(entries)} entries"]
    for e in entries[:SHOWN_ENTRIES]:
        lines.append(f"{e.name}/" if e.is_dir() else f"{e.name} ({e.stat().st_size:,} bytes)")
    if len(entries) > SHOWN_ENTRIES:
        lines.append(f"… {len(entries) - SHOWN_ENTRIES} more")
    return "\n".join(lines)


def summarize_csv(shown: str, text: str, delimiter: str = ",") -> str:
    """Columns with types, the row count and the first rows."""
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if not rows:
        return f"{shown}: CSV, empty"
    header, body = rows[0], rows[1:]
    types = [_column_type([r[i] for r in body if i < len(r)]) for i in range(len(header))]
    columns = ", ".join(f"{h} ({t})" for h, t in zip(header, types, strict=True))
    lines = [f"{shown}: CSV, {len(body)} rows, columns: {columns}", delimiter.join(header)]
    lines += [delimiter.join(r) for r in body[:SHOWN_ROWS]]
    if len(body) > SHOWN_ROWS:
        lines.append(f"… {len(body) - SHOWN_ROWS} more rows")
    return _cut("\n".join(lines))


def _column_type(values: list[str]) -> str:
    filled = [v.strip().replace(",", "") for v in values if v.strip()]
    if not filled:
        return "empty"
    for kind, parse in (("integer", int), ("number", float)):
        try:
            for v in filled:
                parse(v)
            return kind
        except ValueError:
            continue
    return "text"


def _text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise LmforgeError(f"{path.name} is a binary file; read_file reads text, Markdown, "
                           "CSV, HTML and PDF")
    return data.decode("utf-8-sig", errors="replace")


def _cut(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return text[:MAX_CHARS] + f"\n… (cut at {MAX_CHARS:,} of {len(text):,} characters)"
