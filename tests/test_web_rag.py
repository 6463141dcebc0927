"""The web page's documents tab: `lmforge web --model smollm2 --rag-db DB --collection C` on a
tiny collection indexed with the real minilm in Milvus Lite, driven by Debian's Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_rag_answer import write_docs
from test_web import CHROMIUM, LMFORGE, web_server

from lmforge.cli import main
from lmforge.rag.answer import Passage
from lmforge.rag.store import Hit
from lmforge.serve.web_rag import passages_markdown


def test_passages_show_source_position_text_and_citations():
    hits = [Hit(id="a", score=0.9, text="Some  text\nhere.", source="a.md", position=3),
            Hit(id="b", score=0.5, text="Other.", source="b.md", position=0)]
    shown = passages_markdown([Passage(1, hits[0], 0.71), Passage(2, hits[1], 0.42)], [2])
    first, second = shown.split("\n\n**[2]**")
    assert first == "**[1]** `a.md` #3 · relevance 0.71\n\n> Some text here."
    assert second.startswith(" `b.md` #0 · relevance 0.42 · **cited**")


def test_cli_rejects_rag_with_api(capsys):
    assert main(["web", "--api", "http://127.0.0.1:1", "--rag-db", "x.db"]) == 2
    assert "--rag-db goes with --model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rag_url(tmp_path_factory):
    root = write_docs(tmp_path_factory.mktemp("webrag"))
    db = str(root / "w.db")
    # in a child process: Milvus Lite keeps its file locked by the process that opened it
    subprocess.run([str(LMFORGE), "index", "--db", db, "--collection", "towns", "--root",
                    str(root), "--quiet", str(root / "docs")], check=True)
    with web_server(["--model", "smollm2", "--max-tokens", "24", "--temperature", "0",
                     "--rag-db", db, "--collection", "towns"], root / "server.log") as url:
        yield url


def test_documents_tab_in_a_real_browser(rag_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(rag_url)
            page.get_by_role("tab", name="Ask your documents").click()
            answer, passages = page.locator("#rag-answer"), page.locator("#rag-passages")
            box = page.locator("#rag-question textarea")
            box.fill("When was the Zorblat Tower completed?")
            page.locator("#rag-ask").click()
            expect(passages).to_contain_text("tower.txt", timeout=90_000)
            expect(passages).to_contain_text("Mira Holt")
            expect(passages).to_contain_text(re.compile(r"#0 · relevance 0\.\d\d"))
            expect(answer).not_to_have_text(re.compile(r"^\s*(Generating…)?\s*$"),
                                            timeout=90_000)
            page.screenshot(path=str(tmp_path / "web-rag.png"), full_page=True)
            box.fill("What is the capital of Mongolia's stock exchange regulator?")
            box.press("Enter")
            expect(answer).to_contain_text("I don't know", timeout=60_000)
            expect(passages).to_have_text(re.compile(r"^\s*$"))
        finally:
            browser.close()
    assert (tmp_path / "web-rag.png").stat().st_size > 10_000
