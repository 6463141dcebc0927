"""The teacher's top-k log-probabilities cached on disk, so a distillation run (and every
run after it on the same data) pays for the teacher's forward passes once.

The data is cut into chunks of block + 1 tokens at fixed offsets (chunk c is
tokens[c·block : c·block + block + 1]); the teacher reads each chunk's first `block` tokens
and the cache keeps, per position, its k most likely next tokens and their log-probabilities
at T = 1 (the rest of the mass is renormalised away at training time:
`objectives/distillation.py`). Size: k · 8 bytes per token (int32 ids, float32
log-probabilities), 256 bytes at k = 32.

    CACHE_DIR/<key>/topk.safetensors   ids (n, block, k) int32, logprobs (n, block, k) float32
    CACHE_DIR/<key>/meta.json          what the key hashes (teacher, data, block, k, n)

The key is the sha256 of the teacher's content hash (`interop/fingerprint.py`), the sha256
of the chunks' tokens, block, k and the number of chunks: other weights or other data get
another entry, never a stale one. The directory is written whole and renamed into place
(`io.write_directory`), so an interrupted fill leaves no entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from lmforge.io import write_directory

FORMAT = "lmforge-distill-topk/1"


def chunk_count(tokens: np.ndarray, block: int, limit: int = 0) -> int:
    """Chunks of block + 1 tokens at stride `block` in `tokens` (at most `limit`; 0: all)."""
    n = (len(tokens) - 1) // block
    return min(n, limit) if limit else n


def chunk_rows(tokens: np.ndarray, block: int, index: torch.Tensor) -> torch.Tensor:
    """Chunks `index` as rows (len(index), block + 1) int64."""
    return torch.from_numpy(np.stack([tokens[c * block: c * block + block + 1]
                                      for c in index.tolist()]).astype(np.int64))


@dataclass(frozen=True)
class TopK:
    """Per chunk and position: the teacher's top-k next-token ids and log-probabilities."""

    ids: torch.Tensor  # (n, block, k) int32
    logprobs: torch.Tensor  # (n, block, k) float32

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"teacher_ids": self.ids[index].long(), "teacher_logprobs": self.logprobs[index]}


def cache_key(teacher_hash: str, tokens: np.ndarray, block: int, k: int, n: int) -> dict:
    data = hashlib.sha256(np.ascontiguousarray(tokens[: n * block + 1], dtype=np.int64)
                          .tobytes()).hexdigest()
    fields = {"format": FORMAT, "teacher_hash": teacher_hash, "data_sha256": data,
              "block": block, "k": k, "chunks": n}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return {"key": key, **fields}


@torch.no_grad()
def teacher_topk(logits_of: Callable[[torch.Tensor], torch.Tensor], tokens: np.ndarray,
                 block: int, k: int, n: int, batch: int, progress: bool) -> TopK:
    """Run the teacher (`logits_of(ids) -> (B, block, V)`) over chunks 0 … n−1 and keep its
    top k per position."""
    ids = torch.empty(n, block, k, dtype=torch.int32)
    logprobs = torch.empty(n, block, k, dtype=torch.float32)
    for start in tqdm(range(0, n, batch), desc=f"teacher top-{k}", unit="batch",
                      disable=not progress):
        index = torch.arange(start, min(start + batch, n))
        rows = chunk_rows(tokens, block, index)[:, :-1]
        top = F.log_softmax(logits_of(rows).float(), dim=-1).topk(k, dim=-1)
        ids[index], logprobs[index] = top.indices.int().cpu(), top.values.cpu()
    return TopK(ids, logprobs)


def cached_topk(cache_dir: Path, key: dict, compute: Callable[[], TopK]) -> TopK:
    """The cache entry of `key`, computed by `compute` and written atomically if absent."""
    path = Path(cache_dir).expanduser() / key["key"]
    if (path / "topk.safetensors").is_file():
        t = load_file(path / "topk.safetensors")
        return TopK(t["ids"], t["logprobs"])
    top = compute()

    def write(tmp: Path) -> None:
        save_file({"ids": top.ids.contiguous(), "logprobs": top.logprobs.contiguous()},
                  tmp / "topk.safetensors")
        (tmp / "meta.json").write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")

    write_directory(path, write, force=True)
    return top
