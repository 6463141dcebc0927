"""Retrieval on SQuAD v1.1 dev: recall@1/5/10 and MRR of dense, BM25 and hybrid retrieval,
indexing throughput, query latency, and the HNSW index's recall against exact FLAT search.

    python benchmarks/rag.py [--data squad|cmrc2018] [--passages N] [--questions 1000]

The SQuAD dev paragraphs (`../shared/data/squad/passages.jsonl`) are the corpus: the first
--passages of them, each written as one text file and indexed by `lmforge.rag.index` exactly
as `lmforge index` does (chunks of --chunk-tokens minilm tokens, Milvus Lite, FLAT index).
The queries are a fixed random sample (--seed) of --questions questions whose paragraph is in
the corpus; each has one relevant paragraph. A chunk hit counts for its paragraph; the ranking
is the paragraphs in order of their first chunk. recall@k: the share of questions whose
paragraph is in the top k; MRR: the mean of 1/rank within the top 10 (0 when absent).

Indexing throughput is paragraphs per second over the whole `index_inputs` call (read, chunk,
embed, upsert). Query latency is per question and mode, from the text to the ranked hits
(query embedding included; BM25's index loaded before timing), reported as p50 / p99. The
HNSW check copies the collection's vectors into an HNSW collection and compares its top 10
with FLAT's for the same query vectors. `--data cmrc2018` runs the same on CMRC 2018 dev
(Chinese; BM25 terms are Han characters). `--answers N` adds `smollm2`'s answer exact match
and F1 with the top 3 passages and without any, and the supported-answer rate of the answers
with passages. Writes benchmarks/results/rag_DATA.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lmforge
from lmforge.eval.qa import (
    cmrc_exact_match,
    cmrc_f1,
    exact_match,
    f1,
    normalize_answer,
    remove_punctuation,
)
from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text
from lmforge.rag.answer import (
    CITATION,
    build_prompt,
    check_support,
    cited,
    relevant_passages,
    stream_answer,
)
from lmforge.rag.embedder import load_embedder
from lmforge.rag.index import index_inputs
from lmforge.rag.retrieve import MODES, Retriever
from lmforge.rag.store import VectorStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULT_DIR = ROOT / "benchmarks" / "results"
DEPTH = 10  # ranks scored (recall@10, MRR@10)
CHUNK_DEPTH = 40  # chunks fetched to rank DEPTH paragraphs


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def paragraph_ranking(hits) -> list[str]:
    """Paragraph ids (file stems) in order of their first chunk."""
    return list(dict.fromkeys(Path(h.source).stem for h in hits))[:DEPTH]


def score(rankings: list[list[str]], gold: list[str]) -> dict[str, float]:
    ranks = [r.index(g) + 1 if g in r else None for r, g in zip(rankings, gold, strict=True)]
    out = {f"recall@{k}": sum(1 for x in ranks if x is not None and x <= k) / len(ranks)
           for k in (1, 5, 10)}
    out["mrr@10"] = sum(1 / x for x in ranks if x is not None) / len(ranks)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def hnsw_recall(store: VectorStore, vectors: np.ndarray) -> float:
    """Mean overlap of HNSW's top 10 with FLAT's top 10 over the query vectors."""
    rows = list(store.query("squad", "", ["id", "vector", "text", "source", "position",
                                          "content_hash", "metadata"]))
    store.create("squad_hnsw", vectors.shape[1], index_type="HNSW")
    store.open("squad_hnsw")
    for start in range(0, len(rows), 500):
        store.upsert("squad_hnsw", rows[start: start + 500])
    exact = store.search("squad", vectors, DEPTH, fields=["id"])
    approx = store.search("squad_hnsw", vectors, DEPTH, fields=["id"])
    return statistics.mean(len({h.id for h in a} & {h.id for h in e}) / DEPTH
                           for a, e in zip(approx, exact, strict=True))


def gold_in_cited(answer: str, kept, golds: list[str], chinese: bool) -> bool:
    """Whether a passage the answer cites contains a gold answer (after the metric's own
    normalisation: SQuAD's lowercasing, punctuation and article removal; CMRC's punctuation
    removal), i.e. the citation points at the evidence."""
    norm = (lambda t: remove_punctuation(t.lower())) if chinese else normalize_answer
    texts = [norm(kept[n - 1].hit.text) for n in cited(answer, len(kept))]
    return any(norm(g) and norm(g) in t for g in golds for t in texts)


def answer_quality(retriever: Retriever, questions: list[dict], chinese: bool,
                   max_tokens: int = 32, budget: int = 1536) -> dict[str, float]:
    """EM and F1 of smollm2's greedy answers with the top 3 passages (`lmforge ask`'s prompt)
    and with the question alone, citations stripped. Two grounding rates over the answers with
    passages: `supported_rate`, `lmforge ask --check`'s share of supported citations (an
    uncited answer counts as one unsupported), and `gold_cited_rate`, the share of answers
    citing a passage that contains a gold answer (uncited answers count as not)."""
    lm = lmforge.load("smollm2")
    em, f = (cmrc_exact_match, cmrc_f1) if chinese else (exact_match, f1)
    scores = {"em_with": [], "f1_with": [], "em_without": [], "f1_without": []}
    checks, gold_cited = [], 0
    for q in questions:
        passages = relevant_passages(retriever, q["question"], k=3, min_relevance=0.0)
        for key, given in (("with", passages), ("without", [])):
            ids, kept = build_prompt(lm.tokenizer, q["question"], given, budget)
            text = "".join(stream_answer(lm, ids, max_tokens))
            claim = CITATION.sub("", text).strip()
            scores[f"em_{key}"].append(em(claim, q["answers"]))
            scores[f"f1_{key}"].append(f(claim, q["answers"]))
            if key == "with":
                checks += check_support(lm, q["question"], text, kept)
                gold_cited += gold_in_cited(text, kept, q["answers"], chinese)
    out = {k: statistics.mean(v) for k, v in scores.items()}
    return {**out, "supported_rate": sum(c.supported for c in checks) / len(checks),
            "gold_cited_rate": gold_cited / len(questions),
            "citations_checked": len(checks), "questions": len(questions),
            "max_tokens": max_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="squad", choices=["squad", "cmrc2018"],
                    help="../shared/data/DATA: passages.jsonl and questions.jsonl")
    ap.add_argument("--passages", type=int, default=None, help="first N paragraphs (all)")
    ap.add_argument("--questions", type=int, default=1000, help="questions sampled (1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-tokens", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--answers", type=int, default=0,
                    help="also score smollm2's answers to the first N sampled questions (0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default torch's; 1 on a CPU shared with other jobs, "
                         "where OpenMP's waiting threads make a 12 ms query embedding 1.4 s)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/rag_DATA.json")
    ap.add_argument("--note", default="", help="a remark stored in the record")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    data = DATA / args.data
    passages = read_jsonl(data / "passages.jsonl")[: args.passages]
    inside = {p["id"] for p in passages}
    questions = [q for q in read_jsonl(data / "questions.jsonl") if q["passage_id"] in inside]
    questions = random.Random(args.seed).sample(questions, min(args.questions, len(questions)))
    embedder = load_embedder("minilm")
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "squad"
        docs.mkdir()
        for p in passages:
            (docs / f"{p['id']}.txt").write_text(p["text"], encoding="utf-8")
        with VectorStore(str(Path(tmp) / "squad.db")) as store:
            t0 = time.perf_counter()
            report = index_inputs(store, "squad", [str(docs)], embedder, root=tmp,
                                  max_tokens=args.chunk_tokens, overlap=args.overlap,
                                  index_type="FLAT", progress=False)
            index_s = time.perf_counter() - t0
            retriever = Retriever(store, "squad", embedder)
            bm25_chunks = len(retriever.bm25_index.ids)  # built before the timed queries
            modes = {}
            for mode in MODES:
                rankings, times = [], []
                for q in questions:
                    t = time.perf_counter()
                    hits = retriever.search(q["question"], CHUNK_DEPTH, mode)
                    times.append(time.perf_counter() - t)
                    rankings.append(paragraph_ranking(hits))
                modes[mode] = {**score(rankings, [q["passage_id"] for q in questions]),
                               "query_ms_p50": 1000 * percentile(times, 50),
                               "query_ms_p99": 1000 * percentile(times, 99)}
                print(mode, json.dumps(modes[mode]))
            query_vectors = np.stack([embedder.embed_query(q["question"])
                                      for q in questions[:200]])
            hnsw = hnsw_recall(store, query_vectors)
            answers = (answer_quality(retriever, questions[: args.answers],
                                      args.data == "cmrc2018") if args.answers else None)
    record = {
        "data": f"../shared/data/{args.data} (dev)", "passages": len(passages),
        "chunks": report.chunks, "bm25_chunks": bm25_chunks, "questions": len(questions),
        "seed": args.seed,
        "chunk_tokens": args.chunk_tokens, "overlap": args.overlap, "embedder": "minilm fp32",
        "index_s": index_s, "index_passages_per_s": len(passages) / index_s,
        "modes": modes, "hnsw_recall@10_vs_flat": hnsw, "hnsw_queries": len(query_vectors),
        "answers_smollm2": answers,
        "cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_before": load_before, "load_after": os.getloadavg(), "note": args.note,
    }
    out = args.out or RESULT_DIR / f"rag_{args.data}.json"
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
