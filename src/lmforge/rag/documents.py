"""Documents to index: text out of files, confined to a root directory, bad inputs refused.

    >>> files, scopes = resolve_inputs(["docs/", "notes.md"], root=".")
    >>> doc = read_document(files[0])          # Document(source, text, content_hash, kind, title)

Every check runs before anything is written (`index.index_inputs` reads all documents
first), so a bad input leaves the collection as it was. Refused: a path outside the root (also
through a symbolic link), an unknown extension named explicitly (inside a directory such files
are skipped and counted), a file over `MAX_BYTES`, an empty file, a binary file (a NUL byte,
or text that is not UTF-8), a PDF without a text layer.

Kinds: plain text and Markdown are kept as written (Markdown's markup is mostly punctuation
the tokenizer drops); HTML keeps the text of the page (not scripts, styles or tags), one line
per block element; PDF is the text layer of each page (`pypdf`), pages separated by a blank
line. A document's content hash is the SHA-256 of its file's bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from lmforge.errors import LmforgeError

MAX_BYTES = 100 * 2**20
KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
         ".html": "html", ".htm": "html", ".pdf": "pdf"}
SKIPPED_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
              "table", "section", "article", "header", "footer", "pre", "blockquote", "dt",
              "dd", "title", "hr", "figcaption", "main", "nav", "aside"}


@dataclass
class Document:
    source: str  # the path relative to the root, with forward slashes
    text: str
    content_hash: str
    kind: str
    title: str


@dataclass
class InputFile:
    path: Path  # resolved, inside the root
    source: str


def resolve_inputs(inputs: list[str], root: str | Path) -> tuple[list[InputFile], list[str]]:
    """The files named by `inputs` (directories walked, hidden entries skipped), and the scopes
    they cover: a directory's source prefix ("" for the root, "docs/") or a file's source.
    A source indexed before inside a scope whose file is gone is a deleted document."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise LmforgeError(f"--root {root}: not a directory")
    if not inputs:
        raise LmforgeError("give at least one file or directory to index")
    files: dict[str, InputFile] = {}
    scopes: list[str] = []
    for name in inputs:
        path = _inside(Path(name) if Path(name).is_absolute() else Path.cwd() / name, root)
        if path.is_dir():
            rel = path.relative_to(root).as_posix()
            scopes.append("" if rel == "." else rel + "/")
            for child in sorted(path.rglob("*")):
                hidden = any(p.startswith(".") for p in child.relative_to(path).parts)
                if child.is_file() and not hidden and child.suffix.lower() in KINDS:
                    f = _inside(child, root)
                    source = f.relative_to(root).as_posix()
                    files[source] = InputFile(f, source)
        elif path.is_file():
            _kind(path)
            source = path.relative_to(root).as_posix()
            scopes.append(source)
            files[source] = InputFile(path, source)
        else:
            raise LmforgeError(f"{name}: no such file or directory")
    return list(files.values()), scopes


def _inside(path: Path, root: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise LmforgeError(f"{path} is outside the root {root}; index files under --root only "
                           "(or pass a --root that contains it)")
    return resolved


def _kind(path: Path) -> str:
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise LmforgeError(f"{path}: unknown extension {path.suffix or '(none)'}; lmforge "
                           f"indexes {', '.join(sorted(KINDS))} files")
    return kind


def read_document(f: InputFile, max_bytes: int = MAX_BYTES) -> Document:
    """The text of one file, or an LmforgeError saying why it cannot be indexed."""
    kind = _kind(f.path)
    size = f.path.stat().st_size
    if size > max_bytes:
        raise LmforgeError(f"{f.source} is {size / 2**20:.1f} MiB, over the limit of "
                           f"{max_bytes / 2**20:.0f} MiB; split it into smaller files")
    data = f.path.read_bytes()
    text = _pdf_text(f, data) if kind == "pdf" else _decode(f, data)
    if kind == "html":
        title, text = html_text(text)
    else:
        title = _markdown_title(text) if kind == "markdown" else ""
    if not text.strip():
        why = "a PDF without a text layer: OCR it first" if kind == "pdf" else "an empty file"
        raise LmforgeError(f"{f.source} has no text to index ({why}); remove it from the inputs")
    return Document(f.source, text, hashlib.sha256(data).hexdigest(), kind,
                    title or f.path.stem)


def _decode(f: InputFile, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise LmforgeError(f"{f.source} is a binary file (it holds NUL bytes), not "
                           f"{_kind(f.path)} text; remove it from the inputs")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{f.source} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "convert it, e.g. with iconv -f GBK -t UTF-8") from None


def _markdown_title(text: str) -> str:
    m = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return m.group(1) if m else ""


def _pdf_text(f: InputFile, data: bytes) -> str:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as exc:
        raise LmforgeError(f"{f.source} is not a readable PDF ({exc}); re-save or export it "
                           "again") from None


class _TextParser(HTMLParser):
    """Collects the visible text of a page: text nodes outside SKIPPED_TAGS, a line break at
    every block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skip = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in SKIPPED_TAGS:
            self.skip += 1
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in SKIPPED_TAGS:
            self.skip = max(0, self.skip - 1)
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skip:
            self.parts.append(data)


def html_text(page: str) -> tuple[str, str]:
    """(title, text) of an HTML page: runs of spaces collapsed, one line per block."""
    parser = _TextParser()
    parser.feed(page)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return " ".join("".join(parser.title).split()), "\n".join(x for x in lines if x)
