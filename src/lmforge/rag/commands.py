"""`lmforge index`, `search` and `ask`: retrieval-augmented generation from the shell.

    lmforge index --db rag.db --collection notes docs/ paper.pdf
    lmforge search --db rag.db --collection notes "how are chunks made?" -k 5 --mode hybrid
    lmforge search --db rag.db --collection notes "chunks" --filter 'source like "docs/%"'
    lmforge ask --model smollm2 --db rag.db --collection notes "how are chunks made?"

`--db` is a Milvus Lite database (a path ending in .db, created on first use) or a Milvus
server's URI (http://HOST:19530, with --token USER:PASSWORD). Only argparse is imported here;
the retrieval modules load inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

DB_HELP = "a Milvus Lite file (rag.db, created if missing) or a server URI http://HOST:19530"
SHOWN_CHARS = 400


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help=DB_HELP)
    p.add_argument("--token", default="", help="a Milvus server's token (USER:PASSWORD)")
    p.add_argument("--collection", default="documents", help="collection name (default "
                                                              "documents)")
    p.add_argument("--embed-model", default=None,
                   help="the lmforge encoder that embeds chunks and queries (default: the one "
                        "the collection was built with, else minilm)")
    p.add_argument("--embed-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="the encoder's dtype (default fp32)")


def _retrieval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=5, help="passages to retrieve (default 5)")
    p.add_argument("--mode", default="hybrid", choices=["dense", "bm25", "hybrid"],
                   help="dense vectors, BM25 keywords, or both fused by reciprocal rank "
                        "(default hybrid)")
    p.add_argument("--filter", default="",
                   help="a Milvus boolean expression over source, position, content_hash and "
                        "metadata, e.g. 'source like \"docs/%%\"' or "
                        "'metadata[\"kind\"] == \"pdf\"'")
    p.add_argument("--mmr", type=float, default=None, metavar="LAMBDA",
                   help="re-rank by maximal marginal relevance with this λ in [0, 1] "
                        "(1: relevance only; 0.5-0.7 drops near-duplicate passages)")
    p.add_argument("--query-prefix", default="",
                   help="an instruction put before the query only (E5: 'query: ')")
    p.add_argument("--zh-dict", default=None,
                   help="a word list for Chinese BM25 terms (lmforge segment's bimm); "
                        "default: one term per Han character")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `index`, `search` and `ask` to the `lmforge` subcommands."""
    i = sub.add_parser(
        "index", help="index documents (txt, md, html, pdf) into a Milvus collection",
        description="Reads every input (directories recursively, hidden files skipped) and "
                    "refuses bad ones before writing anything; cuts the text into chunks of "
                    "tokens with an overlap of whole sentences, embeds them with the encoder "
                    "and upserts them. Unchanged files (same content hash) are skipped, "
                    "changed ones replaced, files gone from an indexed directory removed; an "
                    "interrupted run can be started again.")
    _store_args(i)
    i.add_argument("inputs", nargs="+", help="files and directories under --root")
    i.add_argument("--root", default=".", help="every input must lie under this directory; "
                                               "sources are stored relative to it (default .)")
    i.add_argument("--chunk-tokens", type=int, default=200, help="tokens per chunk (200)")
    i.add_argument("--overlap", type=int, default=40, help="overlap tokens (default 40)")
    i.add_argument("--index", default="auto", choices=["auto", "FLAT", "IVF_FLAT", "HNSW"],
                   help="vector index of a new collection (auto: FLAT, exact, below 100,000 "
                        "chunks, else HNSW)")
    i.add_argument("--metric", default="COSINE", choices=["COSINE", "IP"])
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search a collection: passages with scores and sources")
    _store_args(s)
    _retrieval_args(s)
    s.add_argument("query", help="the question or keywords")
    s.add_argument("--json", action="store_true", help="one JSON record per passage")
    s.set_defaults(func=cmd_search)

    a = sub.add_parser(
        "ask", help="answer a question from a collection, citing the passages used",
        description="Retrieves passages, drops those whose cosine with the question is under "
                    "--min-relevance (none left: \"I don't know\", no generation), puts the "
                    "best that fit --context-tokens into the prompt as [1], [2], …, streams "
                    "the model's answer and lists the sources. --check scores each cited "
                    "passage: answer terms found in it and the model's likelihood of the "
                    "answer with the passage against without it.")
    _store_args(a)
    _retrieval_args(a)
    a.add_argument("question")
    a.add_argument("--model", required=True, help="the generating model (e.g. smollm2)")
    a.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a.add_argument("--max-tokens", type=int, default=256, help="answer length limit (256)")
    a.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    a.add_argument("--context-tokens", type=int, default=2048,
                   help="prompt budget in tokens; the least relevant passages are left out "
                        "first (default 2048)")
    a.add_argument("--min-relevance", type=float, default=None,
                   help="cosine of passage and question needed to use a passage (0.3)")
    a.add_argument("--check", action="store_true",
                   help="score whether each cited passage supports the answer")
    a.set_defaults(func=cmd_ask)


def _embedder(args: argparse.Namespace, store):
    from lmforge.rag.embedder import load_embedder

    name = args.embed_model
    if name is None:
        name = (store.embed_model(args.collection) if store.has(args.collection) else "") \
            or "minilm"
    return load_embedder(name, args.embed_dtype, getattr(args, "query_prefix", ""))


def cmd_index(args: argparse.Namespace) -> None:
    from lmforge.rag.index import index_inputs
    from lmforge.rag.store import VectorStore

    with VectorStore(args.db, args.token) as store:
        r = index_inputs(store, args.collection, args.inputs, _embedder(args, store),
                         root=args.root, max_tokens=args.chunk_tokens, overlap=args.overlap,
                         index_type=args.index, metric=args.metric, progress=not args.quiet)
        total = store.count(args.collection)
    print(f"{args.collection}: {r.added} added, {r.replaced} replaced, {r.unchanged} unchanged, "
          f"{r.removed} removed; {r.chunks} chunks embedded, {total} in the collection")


def retriever(args: argparse.Namespace, store):
    from lmforge.rag.retrieve import Retriever

    return Retriever(store, args.collection, _embedder(args, store), zh_dict=args.zh_dict)


def cmd_search(args: argparse.Namespace) -> None:
    from lmforge.rag.store import VectorStore

    with VectorStore(args.db, args.token) as store:
        hits = retriever(args, store).search(args.query, args.k, args.mode, args.filter,
                                             args.mmr)
    if not hits:
        print("no passage matches", file=sys.stderr)
    for n, h in enumerate(hits, 1):
        if args.json:
            print(json.dumps({"rank": n, "score": h.score, "source": h.source,
                              "position": h.position, "id": h.id, "text": h.text,
                              "metadata": h.metadata}, ensure_ascii=False))
            continue
        title = h.metadata.get("title", "")
        print(f"[{n}] {h.score:.4f}  {h.source} #{h.position}" + (f"  ({title})" * bool(title)))
        text = " ".join(h.text.split())
        shown = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " …"
        print(textwrap.indent(textwrap.fill(shown, 96), "    "))


def cmd_ask(args: argparse.Namespace) -> None:
    from lmforge.api import load
    from lmforge.errors import LmforgeError
    from lmforge.rag.answer import (
        DONT_KNOW,
        MIN_RELEVANCE,
        build_prompt,
        check_support,
        relevant_passages,
        stream_answer,
        supported_rate,
    )
    from lmforge.rag.store import VectorStore

    lm = load(args.model, dtype=args.dtype)
    if not lm.config.causal:
        raise LmforgeError(f"--model {args.model} is an encoder; ask needs a generating model "
                           "such as smollm2")
    budget = min(args.context_tokens, lm.config.max_seq_len - args.max_tokens)
    floor = MIN_RELEVANCE if args.min_relevance is None else args.min_relevance
    with VectorStore(args.db, args.token) as store:
        passages = relevant_passages(retriever(args, store), args.question, args.k, args.mode,
                                     args.filter, floor)
    if not passages:
        print(DONT_KNOW)
        return
    ids, kept = build_prompt(lm.tokenizer, args.question, passages, budget)
    answer = ""
    for text in stream_answer(lm, ids, args.max_tokens, args.temperature):
        answer += text
        print(text, end="", flush=True)
    print("\n\nSources:")
    for p in kept:
        print(f"[{p.number}] {p.hit.source} #{p.hit.position} (relevance {p.relevance:.2f})")
    if args.check:
        checks = check_support(lm, args.question, answer, kept)
        for c in checks:
            label = f"[{c.number}]" if c.number else "(no citation)"
            print(f"{label} terms found {c.overlap:.0%}, likelihood lift {c.lift:+.2f} nats/"
                  f"token: {'supported' if c.supported else 'NOT supported'}")
        print(f"supported-answer rate: {supported_rate(checks):.2f}")
