"""Metrics of a run: one JSON object per line in `metrics.jsonl`, `loss.png`, and for
mixture-of-experts models `experts.png`."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.io import atomic_write


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            # rows logged after the checkpoint we resume from are replayed, not duplicated
            old = [json.loads(line) for line in self.path.read_text().splitlines() if line]
            self.rows = [r for r in old if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, path: Path) -> None:
        """Training and validation loss against step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.rows if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train, strict=True), label="train", lw=1)
        if val:
            ax.plot(*zip(*val, strict=True), label="validation", marker="o", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    def plot_experts(self, path: Path) -> None:
        """Expert utilisation against step, one panel per MoE layer (nothing for dense
        models): the fraction of token assignments each expert received, with the uniform
        share 1/n dashed and the dropped fraction in black."""
        rows = [r for r in self.rows if "moe_utilisation" in r]
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = list(rows[-1]["moe_utilisation"])
        steps = [r["step"] for r in rows]
        fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 1, 3.4),
                                 sharey=True, squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            shares = list(zip(*(r["moe_utilisation"][layer] for r in rows), strict=True))
            for i, share in enumerate(shares):
                ax.plot(steps, share, lw=1, label=f"expert {i}")
            ax.axhline(1 / len(shares), ls="--", c="grey", lw=1)
            ax.plot(steps, [r["moe_dropped"] for r in rows], c="black", lw=1, label="dropped")
            ax.set_title(f"layer {layer}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("fraction of assignments")
        axes[0][-1].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
