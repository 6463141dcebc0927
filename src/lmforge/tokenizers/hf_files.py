"""Reading and writing the Hugging Face tokenizer files: `tokenizer.json` + `tokenizer_config.json`.

`tokenizer.json` (the `tokenizers` library's format) holds the model, added tokens,
normalizer, pre-tokenizer, post-processor and decoder; `tokenizer_config.json` (transformers')
holds the special-token roles, `add_bos_token` and the chat template, which newer transformers
versions write to `chat_template.jinja` instead. The algorithm-specific parts (the `model` and
`pre_tokenizer` sections) are read and written by each tokenizer class; this module holds
what every class shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import SpecialTokens

if TYPE_CHECKING:
    from lmforge.tokenizers.base import Tokenizer

_ROLES = ("bos", "eos", "pad", "unk")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path} is not valid JSON ({e}); the file is damaged") from None


def read_dir(directory: str | Path) -> tuple[dict, dict]:
    """`(tokenizer.json, tokenizer_config.json)` of a directory; the config may be empty."""
    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        raise LmforgeError(f"{d} has no tokenizer.json; point to a tokenizer directory")
    config = read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() \
        else {}
    jinja = d / "chat_template.jinja"
    if "chat_template" not in config and jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    return read_json(d / "tokenizer.json"), config


def write_dir(directory: str | Path, tokenizer_json: dict, config: dict) -> None:
    d = Path(directory)
    atomic_write_text(d / "tokenizer.json", json.dumps(tokenizer_json, ensure_ascii=False))
    atomic_write_text(d / "tokenizer_config.json",
                      json.dumps(config, ensure_ascii=False, indent=2) + "\n")


# -- reading ----------------------------------------------------------------------------------

def read_added_tokens(obj: dict) -> list[AddedToken]:
    out = []
    for a in obj.get("added_tokens") or []:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            raise LmforgeError(f"added token {a['content']!r} in tokenizer.json strips "
                               "whitespace or matches single words only; lmforge matches "
                               "added tokens exactly and does not support those flags")
        out.append(AddedToken(a["content"], int(a["id"]), special=bool(a.get("special"))))
    return out


def id_list(vocab: dict[str, int], added: list[AddedToken]) -> list[str]:
    """Token text by id: the model's vocabulary with the added tokens laid over it (an added
    token's id may lie past the model's vocabulary, as Qwen's do)."""
    size = max([*vocab.values(), *(a.id for a in added)], default=-1) + 1
    tokens: list[str | None] = [None] * size
    for token, i in vocab.items():
        tokens[i] = token
    for a in added:
        tokens[a.id] = a.content
    holes = [i for i, t in enumerate(tokens) if t is None]
    if holes:
        raise LmforgeError(f"tokenizer.json has no token for ids {holes[:5]}"
                           f"{' …' if len(holes) > 5 else ''}; the file is damaged")
    return tokens  # type: ignore[return-value]


def _template_ends(post: dict | None) -> tuple[str | None, str | None]:
    """Special tokens a TemplateProcessing post-processor puts before and after one text."""
    if post is None:
        return None, None
    if post.get("type") == "Sequence":
        for p in post.get("processors", []):
            if p.get("type") == "TemplateProcessing":
                return _template_ends(p)
        return None, None
    if post.get("type") != "TemplateProcessing" or not post.get("single"):
        return None, None
    single = post["single"]
    first = single[0].get("SpecialToken", {}).get("id")
    last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
    return first, last


def read_special(config: dict, obj: dict, ids: dict[str, int]) -> SpecialTokens:
    """Roles from tokenizer_config.json; whether BOS/EOS are added from its `add_*_token`
    flags, else from tokenizer.json's post-processor (Llama 3 says it only there)."""
    def lookup(name: str | dict | None, where: str) -> int | None:
        if isinstance(name, dict):  # a serialized AddedToken
            name = name.get("content")
        if name is None:
            return None
        if name not in ids:
            raise LmforgeError(f"{where} names the token {name!r}, which is not in the "
                               "vocabulary; fix tokenizer_config.json")
        return ids[name]

    special = SpecialTokens(**{r: lookup(config.get(f"{r}_token"), f"{r}_token") for r in _ROLES})
    first, last = _template_ends(obj.get("post_processor"))
    special.add_bos = bool(config.get("add_bos_token", first is not None))
    special.add_eos = bool(config.get("add_eos_token", last is not None))
    if special.bos is None and first is not None:
        special.bos = lookup(first, "the post-processor")
    if special.eos is None and last is not None and special.add_eos:
        special.eos = lookup(last, "the post-processor")
    return special


def read_chat_template(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # older configs: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default", template[0].get("template") if template else None)
    return template


def read_nfc(normalizer: dict | None) -> bool:
    """True for an NFC normalizer, False for none; any other is refused, not ignored."""
    if normalizer is None:
        return False
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" \
        else [normalizer]
    if all(s.get("type") == "NFC" for s in steps):
        return bool(steps)
    raise LmforgeError(f"tokenizer.json's normalizer {normalizer} is not supported "
                       "(lmforge applies none or NFC)")


def read_max_length(config: dict) -> int | None:
    n = config.get("model_max_length")
    return int(n) if isinstance(n, int | float) and n < 1e12 else None  # HF: 1e30 = unknown


# -- writing ----------------------------------------------------------------------------------

def added_tokens_json(added: AddedVocab) -> list[dict]:
    return [{"id": t.id, "content": t.content, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": t.special} for t in added.tokens]


def post_processor_json(tok: Tokenizer, *, byte_level: bool) -> dict | None:
    """A TemplateProcessing that adds BOS/EOS as `tok.special` says, else a no-op."""
    s = tok.special
    before = [s.bos] if s.add_bos and s.bos is not None else []
    after = [s.eos] if s.add_eos and s.eos is not None else []
    if not before and not after:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                "use_regex": True} if byte_level else None

    def piece(i: int, type_id: int) -> dict:
        return {"SpecialToken": {"id": tok.id_to_token(i), "type_id": type_id}}

    def text(name: str, type_id: int) -> list[dict]:
        return [*(piece(i, type_id) for i in before),
                {"Sequence": {"id": name, "type_id": type_id}},
                *(piece(i, type_id) for i in after)]

    return {"type": "TemplateProcessing", "single": text("A", 0),
            "pair": text("A", 0) + text("B", 1),
            "special_tokens": {tok.id_to_token(i): {"id": tok.id_to_token(i), "ids": [i],
                                                    "tokens": [tok.id_to_token(i)]}
                               for i in before + after}}


def config_json(tok: Tokenizer, model_max_length: int | None = None) -> dict:
    """tokenizer_config.json for transformers' AutoTokenizer (the generic fast class)."""
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role in _ROLES:
        if (i := getattr(tok.special, role)) is not None:
            config[f"{role}_token"] = tok.id_to_token(i)
    config |= {"add_bos_token": tok.special.add_bos, "add_eos_token": tok.special.add_eos,
               "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if tok.chat_template is not None:
        config["chat_template"] = tok.chat_template
    return config
