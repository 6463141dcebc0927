"""`lmforge agent-data`: generate tool-use training conversations (agent/teach.py).

    lmforge agent-data --n 3000 --seed 0 --out runs/agent-data/train.jsonl
    lmforge agent-data --n 3000 --gsm8k-train ../shared/data/gsm8k/train.jsonl --out …
    lmforge train --config configs/smollm2-tools-lora.toml
"""

from __future__ import annotations

import argparse
from collections import Counter

from lmforge.agent.teach_gsm8k import GSM8K_TRAIN


def register(sub: argparse._SubParsersAction) -> None:
    """Add `agent-data` to the `lmforge` subcommands."""
    p = sub.add_parser("agent-data", help="generate tool-use SFT conversations (JSONL)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="number of conversations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--mix", default="", help="family=weight,… (default: teach.MIX)")
    p.add_argument("--gsm8k-train", default=GSM8K_TRAIN,
                   help="GSM8K train JSONL for the gsm8k family (never the test split)")
    p.set_defaults(func=cmd_agent_data)


def cmd_agent_data(args: argparse.Namespace) -> None:
    from lmforge.agent.teach import conversations, parse_mix, write_jsonl

    rows = conversations(args.n, args.seed, parse_mix(args.mix) if args.mix else None,
                         args.gsm8k_train)
    path = write_jsonl(rows, args.out)
    counts = Counter(r["family"] for r in rows)
    print(f"{len(rows)} conversations → {path} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
