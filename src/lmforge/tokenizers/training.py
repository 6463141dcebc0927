"""What every tokenizer trainer shares: counting the distinct pre-tokens of a corpus.

A trainer sees the corpus as its distinct pre-tokens ("words") with their frequencies, so
a word seen 10,000 times is processed once. Special tokens are cut out of the text first,
as `tokenizers` does, so "<|endoftext|>" in the corpus never feeds a merge.

    >>> count_words(["a b a", "b<s>"], str.split, special=["<s>"], progress=False)
    Counter({'a': 2, 'b': 2})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.char import CharTokenizer


def count_words(texts: Iterable[str], split: Callable[[str], Iterable[str]], *,
                special: Sequence[str] = (), progress: bool = True) -> Counter[str]:
    """Frequency of each piece `split` makes of the texts, special-token strings cut out."""
    added = AddedVocab(AddedToken(t, i) for i, t in enumerate(special))
    counts: Counter[str] = Counter()
    for text in tqdm(texts, desc="count words", unit=" lines", disable=not progress,
                     mininterval=0.5):
        if not isinstance(text, str):
            raise LmforgeError(f"training texts must be strings, got {type(text).__name__}")
        if special:
            for piece, token_id in added.split(text, parse_special=True):
                if token_id is None:
                    counts.update(split(piece))
        else:
            counts.update(split(text))
    if not counts:
        raise LmforgeError("the training text is empty; give files that hold some text")
    return counts


def check_special(special: Sequence[str], vocab_size: int, floor: int) -> list[str]:
    """Distinct, non-empty special tokens that leave room for `floor` other tokens."""
    special = list(dict.fromkeys(special))
    if any(not t for t in special):
        raise LmforgeError("a special token cannot be the empty string")
    if vocab_size < len(special) + floor:
        raise LmforgeError(f"--vocab-size {vocab_size} is too small: this tokenizer needs at "
                           f"least {len(special) + floor} tokens ({len(special)} special + "
                           f"{floor}); raise it")
    return special


def train_char(texts: Iterable[str], vocab_size: int, *, special: Sequence[str] = (),
               eos: str | None = None, unk: str = "<unk>", progress: bool = True
               ) -> CharTokenizer:
    """A character tokenizer of at most `vocab_size` tokens: `unk`, the special tokens, then
    the text's characters, the most frequent ones (ties: lower code point) if not all fit."""
    special = [unk, *special] + ([eos] if eos is not None and eos not in special else [])
    special = check_special(special, vocab_size, 1)
    counts = count_words(texts, list, special=special, progress=progress)
    chars = sorted(counts, key=lambda c: (-counts[c], c))[:vocab_size - len(special)]
    return CharTokenizer(sorted(chars), special, roles={"eos": eos, "unk": unk})
