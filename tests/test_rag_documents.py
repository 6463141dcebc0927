"""lmforge.rag.documents and lmforge.rag.chunking: text extraction, refused inputs, chunks."""

from __future__ import annotations

import os

import pytest

from lmforge.errors import LmforgeError
from lmforge.rag.chunking import chunk_text, sentence_spans
from lmforge.rag.documents import html_text, read_document, resolve_inputs

WORDS = lambda s: len(s.split())  # noqa: E731  a whitespace "tokenizer" with exact counts


def pdf_bytes(text: str) -> bytes:
    """A one-page PDF whose text layer is `text` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def test_docstring_example_and_overlap_of_whole_sentences():
    chunks = chunk_text("A b c. D e. F g h. I.", WORDS, max_tokens=5, overlap=3)
    assert [c.text for c in chunks] == ["A b c. D e.", "D e. F g h.", "F g h. I."]
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_text(text, WORDS, max_tokens=20, overlap=5)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.n_tokens <= 20 and b.start < a.end  # they overlap …
        assert text[b.start:a.end].strip().endswith(".")  # … by whole sentences
    assert chunks[0].start == 0 and chunks[-1].text.endswith("39 is here.")
    assert all(c.text == text[c.start:c.end].strip() for c in chunks)


def test_long_sentences_and_chinese_are_cut_within_budget():
    long = "word " * 50 + "end."
    chunks = chunk_text(long, WORDS, max_tokens=8, overlap=0)
    assert all(c.n_tokens <= 8 for c in chunks) and "".join(c.text + " " for c in chunks).split() \
        == long.split()
    zh = "北京是中国的首都。" + "长" * 30 + "。上海很大！"
    assert [zh[s:e] for s, e in sentence_spans(zh)][0] == "北京是中国的首都。"
    chunks = chunk_text(zh, len, max_tokens=10, overlap=0)  # one token per character
    assert all(c.n_tokens <= 10 for c in chunks) and "".join(c.text for c in chunks) == zh
    with pytest.raises(LmforgeError, match="overlap"):
        chunk_text("x", WORDS, max_tokens=4, overlap=4)


def test_markdown_headings_and_lists_end_sentences():
    spans = sentence_spans("# Title\nIntro line\n- item one\n- item two")
    assert len(spans) == 4


def test_html_text_drops_scripts_and_keeps_blocks():
    title, text = html_text("<html><head><title>Paris &amp; co</title><style>p{}</style>"
                            "</head><body><script>var x = 1;</script><p>Paris is the "
                            "capital.</p><div>It has   a tower.</div></body></html>")
    assert title == "Paris & co"
    assert text == "Paris is the capital.\nIt has a tower."


def test_read_each_kind_and_hash(tmp_path):
    (tmp_path / "a.txt").write_text("plain text.", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Heading\n\nBody.", encoding="utf-8")
    (tmp_path / "c.html").write_text("<p>Hyper text.</p>", encoding="utf-8")
    (tmp_path / "d.pdf").write_bytes(pdf_bytes("Portable text layer"))
    (tmp_path / "skip.csv").write_text("1,2", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    files, scopes = resolve_inputs([str(tmp_path)], tmp_path)
    assert [f.source for f in files] == ["a.txt", "b.md", "c.html", "d.pdf"] and scopes == [""]
    docs = [read_document(f) for f in files]
    assert [d.kind for d in docs] == ["text", "markdown", "html", "pdf"]
    assert docs[1].title == "Heading" and docs[0].title == "a"
    assert docs[2].text == "Hyper text." and "Portable text layer" in docs[3].text
    assert len({d.content_hash for d in docs}) == 4


def test_bad_inputs_are_refused_with_clear_errors(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "bin.txt").write_bytes(b"\x89PNG\x00\x00data")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "notes.docx").write_bytes(b"PK")
    (root / "scan.pdf").write_bytes(pdf_bytes(""))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    with open(root / "huge.txt", "wb") as f:  # sparse: 100 MiB + 1 byte without writing it
        f.truncate(100 * 2**20 + 1)
    (tmp_path / "outside.txt").write_text("out", encoding="utf-8")
    os.symlink(tmp_path / "outside.txt", root / "link.txt")

    def read(name):
        return read_document(resolve_inputs([str(root / name)], root)[0][0])

    with pytest.raises(LmforgeError, match="no text to index"):
        read("empty.txt")
    with pytest.raises(LmforgeError, match="binary file"):
        read("bin.txt")
    with pytest.raises(LmforgeError, match="not UTF-8"):
        read("latin1.txt")
    with pytest.raises(LmforgeError, match="unknown extension .docx"):
        read("notes.docx")
    with pytest.raises(LmforgeError, match="without a text layer"):
        read("scan.pdf")
    with pytest.raises(LmforgeError, match="not a readable PDF"):
        read("broken.pdf")
    with pytest.raises(LmforgeError, match="over the limit of 100 MiB"):
        read("huge.txt")
    with pytest.raises(LmforgeError, match="outside the root"):
        resolve_inputs([str(tmp_path / "outside.txt")], root)
    with pytest.raises(LmforgeError, match="outside the root"):
        resolve_inputs([str(root)], root)  # the symbolic link inside points out
    with pytest.raises(LmforgeError, match="no such file"):
        resolve_inputs([str(root / "missing.md")], root)
