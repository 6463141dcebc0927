"""A classification head as an adapter: attached to a model from outside, saved apart
from its base in the adapter directory format (`adapt/adapter.py`), loaded back with
`lmforge.load(spec, adapter=DIR)`, and used by `classify`.

    adapter_config.json        {"pooling": "mean", "n_classes": 2, "labels": ["0", "1"],
                                "head_hidden": 0, "max_len": 128, "layer": -1, …,
                                "lmforge": {"format": "lmforge-adapter/1",
                                            "method": "probe" | "head",
                                            "base_model": "minilm", "base_hash": "sha256:…"}}
    adapter_model.safetensors  the head's tensors: out.weight, out.bias (dense.* with a
                               hidden layer)

Method "probe": a head on the unchanged model. Method "head": a head on fully fine-tuned
weights, whose checkpoint directory (the run's model/) is the base. The head sits on the
Transformer as the submodule `classifier`, which the model's own code never reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge.adapt.adapter import AdapterMethod, register_method
from lmforge.adapt.heads import ClassifierHead, hidden_states, pool
from lmforge.adapt.labeled import Labelled, encode
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer

if TYPE_CHECKING:
    from lmforge.api import LoadedModel

ATTR = "classifier"
SETTINGS = ("pooling", "n_classes", "labels", "head_hidden", "max_len", "layer",
            "text_column", "label_column")


class Classifier(nn.Module):
    """The head and how it reads the model (pooling, layer, labels, max_len)."""

    def __init__(self, head: ClassifierHead, settings: dict) -> None:
        super().__init__()
        self.head, self.settings = head, {k: settings[k] for k in SETTINGS}


def attach(model: Transformer, head: ClassifierHead, settings: dict) -> None:
    model.add_module(ATTR, Classifier(head, settings))


def export(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    classifier = getattr(model, ATTR, None)
    if classifier is None:
        raise LmforgeError("this model carries no classification head to save")
    tensors = {k: v.detach().float().cpu() for k, v in classifier.head.state_dict().items()}
    return dict(classifier.settings), tensors


def apply(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    d_in = tensors["dense.weight" if config["head_hidden"] else "out.weight"].shape[1]
    head = ClassifierHead(d_in, config["n_classes"], config["head_hidden"])
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    attach(model, head.to(model.device, model.dtype).eval(), config)


for _name in ("head", "probe"):
    register_method(AdapterMethod(_name, export, apply))


@torch.inference_mode()
def classify(lm: LoadedModel, texts: list[str], batch_size: int = 32) -> list[str]:
    """The label name of each text, by the head a loaded adapter attached."""
    classifier = getattr(lm.model, ATTR, None)
    if classifier is None:
        raise LmforgeError("load the model with a head adapter first: "
                           "lmforge.load(spec, adapter=\"RUN_DIR/adapter\")")
    s = classifier.settings
    data = encode(lm.tokenizer, lm.config, Labelled(texts, [0] * len(texts), s["labels"]),
                  s["max_len"])
    layer = len(lm.model.layers) if s["layer"] < 0 else s["layer"]
    out = []
    for start in range(0, len(texts), batch_size):
        b = data.batch(list(range(start, min(start + batch_size, len(texts)))))
        b = {k: v.to(lm.model.device) for k, v in b.items()}
        h = hidden_states(lm.model, b["ids"], b["attention_mask"], [layer], b["token_types"])
        u = pool(h[layer], b["attention_mask"], s["pooling"])
        out += [s["labels"][i] for i in classifier.head(u.to(lm.model.dtype)).argmax(-1)]
    return out
