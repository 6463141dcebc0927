"""Linear probing by layer: what each layer of a frozen model encodes about a task.

    >>> run = probe_task("minilm", "sst2", "all", "runs/probe", pooling="mean",
    ...                  train_subset=8000)
    >>> [(r.layer, r.eval_acc) for r in run.results]

Features. Each text is pooled (`adapt/heads.py`: cls, mean or last) at every asked layer in
one pass per batch (rows sorted by length, so little padding). The pooled features of a
(model content hash, task, split, layer set, pooling, token rows) are written once to
`cache_dir/<key>.safetensors` (atomically) and read back the next time: a probe then costs
no forward pass. The key hashes the token rows themselves, so another tokenizer, `max_len`,
subset or data file is another entry.

Probes (Alain & Bengio, 2016, "Understanding intermediate layers using linear classifier
probes"). Features are standardised with the training set's mean and standard deviation,
then a multinomial logistic regression (or a one-hidden-layer head) minimises
L = CE + λ‖W‖² over the whole training set with L-BFGS: a layer takes seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from lmforge.adapt.heads import (
    ClassifierHead,
    check_pooling,
    classification_loss,
    hidden_states,
    pool,
)
from lmforge.adapt.labeled import Encoded, encode, sample, task_data
from lmforge.errors import LmforgeError
from lmforge.eval.classify import DATASETS
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights
from lmforge.io import atomic_write
from lmforge.model.transformer import Transformer

CACHE_VERSION = 1


@torch.inference_mode()
def pooled_features(model: Transformer, data: Encoded, layers: Sequence[int], pooling: str,
                    batch_size: int = 64, progress: bool = False) -> dict[int, torch.Tensor]:
    """{layer: (N, d) fp32 pooled features} of every row of `data`, one pass per batch."""
    n = len(data.rows)
    out = {k: torch.empty(n, model.config.d_model) for k in layers}
    order = sorted(range(n), key=lambda i: len(data.rows[i]))
    device = model.device
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="features", unit="batch", disable=not progress):
        chunk = order[start: start + batch_size]
        b = data.batch(chunk)
        mask = b["attention_mask"].to(device)
        states = hidden_states(model, b["ids"].to(device), mask, layers,
                               b["token_types"].to(device))
        for k in layers:
            out[k][chunk] = pool(states[k], mask, pooling).cpu()
    return out


def rows_digest(data: Encoded) -> str:
    """sha256 of the token rows, segment ids and labels (what the features depend on)."""
    h = hashlib.sha256()
    for row, types in zip(data.rows, data.types, strict=True):
        h.update(json.dumps([row, types]).encode())
    h.update(data.labels.numpy().tobytes())
    return h.hexdigest()


def feature_key(model_hash: str, task: str, split: str, layers: Sequence[int], pooling: str,
                data: Encoded) -> str:
    parts = {"version": CACHE_VERSION, "model": model_hash, "task": task, "split": split,
             "layers": list(layers), "pooling": pooling, "rows": rows_digest(data)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def cached_features(model: Transformer, model_hash: str, data: Encoded, *, task: str,
                    split: str, layers: Sequence[int], pooling: str, cache_dir: str | Path,
                    batch_size: int = 64, progress: bool = False) -> dict[int, torch.Tensor]:
    """`pooled_features`, read from the cache when this key was computed before."""
    path = Path(cache_dir) / f"{feature_key(model_hash, task, split, layers, pooling, data)}" \
                             ".safetensors"
    if path.is_file():
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(f"layer.{k}") for k in layers}
    features = pooled_features(model, data, layers, pooling, batch_size, progress)
    meta = {"model": model_hash, "task": task, "split": split, "pooling": pooling,
            "layers": json.dumps(list(layers)), "rows": str(len(data.rows))}
    tensors = {f"layer.{k}": v.contiguous() for k, v in features.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return features


@dataclass
class Probe:
    """A head on standardised features: logits = head((x − mean) / std)."""

    mean: torch.Tensor
    std: torch.Tensor
    head: ClassifierHead

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x - self.mean) / self.std).argmax(-1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return (self.predict(x) == y).float().mean().item()


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, hidden: int = 0,
              l2: float = 1e-2, steps: int = 200, seed: int = 0) -> Probe:
    """Fit a probe on (N, d) features and (N,) labels: full-batch L-BFGS on CE + λ‖W‖²."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    torch.manual_seed(seed)
    head = ClassifierHead(x.shape[1], n_classes, hidden)
    weights = [p for n, p in head.named_parameters() if n.endswith("weight")]
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = classification_loss(head(z), y) + l2 * sum((w ** 2).sum() for w in weights)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(mean, std, head.eval())


@dataclass
class LayerResult:
    layer: int
    train_acc: float
    eval_acc: float


def probe_layers(train_x: dict[int, torch.Tensor], train_y: torch.Tensor,
                 eval_x: dict[int, torch.Tensor], eval_y: torch.Tensor, n_classes: int,
                 hidden: int = 0, l2: float = 1e-2) -> list[LayerResult]:
    """One probe per layer, fit on the training features, scored on both splits."""
    results = []
    for k in sorted(train_x):
        probe = fit_probe(train_x[k], train_y, n_classes, hidden, l2)
        results.append(LayerResult(k, probe.accuracy(train_x[k], train_y),
                                   probe.accuracy(eval_x[k], eval_y)))
    return results


def plot_layers(results: list[LayerResult], path: Path, title: str, chance: float) -> None:
    """Accuracy against depth (train and evaluation), with the majority-class rate dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r.layer for r in results]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(layers, [100 * r.train_acc for r in results], marker="o", lw=1, label="train")
    ax.plot(layers, [100 * r.eval_acc for r in results], marker="o", lw=1.5, label="evaluation")
    ax.axhline(100 * chance, ls="--", c="grey", lw=1, label="majority class")
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


@dataclass
class ProbeRun:
    """What `probe_task` measured, and where it wrote the table and the plot."""

    results: list[LayerResult]
    n_train: int
    n_eval: int
    chance: float
    plot: Path
    table: Path


def parse_layers(text: str, n_layer: int) -> list[int]:
    """"all" → 0 … n_layer; "0,3,6" → [0, 3, 6], each checked."""
    if text == "all":
        return list(range(n_layer + 1))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise LmforgeError(f"--layers {text!r}: write all, or layer numbers like 0,3,6") from None
    bad = [k for k in layers if not 0 <= k <= n_layer]
    if bad or not layers:
        raise LmforgeError(f"--layers {text!r}: this model has layers 0 (embeddings) to "
                           f"{n_layer}")
    return layers


def probe_task(spec: str, task: str, layers: str, out: str | Path, *, pooling: str = "",
               eval_data: str = "", train_subset: int = 0, subset_seed: int = 0,
               max_len: int = 128, cache_dir: str | Path = "~/.cache/lmforge/features",
               head_hidden: int = 0, l2: float = 1e-2, text_column: str = "",
               label_column: str = "label", data_root: str = "", progress: bool = True
               ) -> ProbeRun:
    """Probe every asked layer of model `spec` on `task` (sst2, chnsenticorp or a labelled
    file with `eval_data`): features (cached), one probe per layer, probe.json and the
    accuracy-by-layer PNG in `out`."""
    from lmforge.api import build_model

    config, state_dict, tokenizer, _ = load_weights(spec)
    if tokenizer is None:
        raise LmforgeError(f"{spec} has no tokenizer; probing reads text")
    pooling = check_pooling(pooling, config)
    model = build_model(config, state_dict)
    model_hash = content_hash(state_dict)
    train, evaluation = task_data(task, eval_data, data_root, text_column, label_column)
    train = sample(train, train_subset, subset_seed)
    chosen = parse_layers(layers, config.n_layer)
    task_id = task if task in DATASETS else str(Path(task).resolve())
    feats, labels = {}, {}
    for split, data in (("train", train), ("eval", evaluation)):
        rows = encode(tokenizer, config, data, max_len)
        feats[split] = cached_features(model, model_hash, rows, task=task_id, split=split,
                                       layers=chosen, pooling=pooling,
                                       cache_dir=Path(cache_dir).expanduser(), progress=progress)
        labels[split] = rows.labels
    results = probe_layers(feats["train"], labels["train"], feats["eval"], labels["eval"],
                           len(train.names), head_hidden, l2)
    chance = labels["eval"].bincount().max().item() / len(labels["eval"])
    out = Path(out)
    plot, table = out / "probe_layers.png", out / "probe.json"
    plot_layers(results, plot, f"{Path(spec).name} on {Path(task).name}, {pooling} pooling "
                f"({len(train.texts)} training examples)", chance)
    atomic_write(table, lambda tmp: Path(tmp).write_text(json.dumps(
        {"model": spec, "model_hash": model_hash, "task": task, "pooling": pooling,
         "n_train": len(train.texts), "n_eval": len(evaluation.texts), "l2": l2,
         "majority": chance, "layers": [dataclasses.asdict(r) for r in results]},
        indent=2) + "\n"))
    return ProbeRun(results, len(train.texts), len(evaluation.texts), chance, plot, table)
