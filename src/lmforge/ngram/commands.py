"""`lmforge ngram` subcommands: train an n-gram model into an ARPA file, sample from one.

    lmforge ngram train --order 5 --input train.txt --out model.arpa
    lmforge ngram train --order 3 --input train.txt --out m.arpa --smoothing addk --k 0.1
    lmforge ngram sample --model model.arpa --n 3 --seed 1
    lmforge eval --model model.arpa --input test.txt

Only argparse is imported here; the commands import numpy and the estimators when they run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def cmd_train(args: argparse.Namespace) -> None:
    from lmforge.ngram.arpa import write_arpa
    from lmforge.ngram.model import train
    from lmforge.ngram.vocab import read_lines, tokenize

    start = time.perf_counter()
    sentences = tokenize(read_lines(args.input))
    model = train(sentences, args.order, args.smoothing, args.k, args.min_count,
                  args.closed_vocab, progress=True)
    write_arpa(model, args.out, progress=True)
    sizes = ", ".join(f"{n}-grams {s:,}" for n, s in enumerate(model.sizes, 1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {args.out}: {args.smoothing}, vocabulary {len(model.vocab):,}, {sizes} "
          f"({time.perf_counter() - start:.1f} s, peak memory {peak:.0f} MB)")


def cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from lmforge.ngram.arpa import read_arpa

    model = read_arpa(args.model)
    rng = np.random.default_rng(args.seed)
    prefix = args.prompt.split() if args.prompt else []
    for _ in range(args.n):
        words = model.sample(rng, args.max_words, prefix)
        print(" ".join(prefix + words))
    sys.stdout.flush()


def register(sub: argparse._SubParsersAction) -> None:
    """Add `ngram train` and `ngram sample` to the `lmforge` parser."""
    ng = sub.add_parser("ngram", help="n-gram language models (ARPA): train, sample",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = ng.add_subparsers(dest="ngram_command", required=True)
    t = cmds.add_parser("train", help="count and smooth an n-gram model into an ARPA file")
    t.add_argument("--input", required=True, help="UTF-8 text (.gz allowed), one sentence a line")
    t.add_argument("--out", required=True, help="output ARPA file (.arpa, or .arpa.gz)")
    t.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    t.add_argument("--smoothing", default="mkn", choices=["mkn", "kn", "addk"],
                   help="mkn: modified Kneser-Ney as KenLM's lmplz (default); kn: "
                        "interpolated Kneser-Ney; addk: add-k with back-off")
    t.add_argument("--k", type=float, default=1.0, help="k of add-k (default 1: Laplace)")
    t.add_argument("--min-count", type=int, default=1,
                   help="words seen fewer times become <unk> (open vocabulary; default 1)")
    t.add_argument("--closed-vocab", action="store_true",
                   help="take the text's words as they are; <unk> in the text is an ordinary "
                        "word (Penn Treebank)")
    t.set_defaults(func=cmd_train)
    s = cmds.add_parser("sample", help="generate sentences by sampling from an ARPA model")
    s.add_argument("--model", required=True, help="an ARPA file")
    s.add_argument("--prompt", default=None, help="words to continue (default: a new sentence)")
    s.add_argument("--n", type=int, default=1, help="number of sentences")
    s.add_argument("--max-words", type=int, default=50, help="stop a sentence after N words")
    s.add_argument("--seed", type=int, default=None, help="random seed")
    s.set_defaults(func=cmd_sample)
