"""Decode steps compiled with `torch.compile` (Inductor), an opt-in (`--compile`).

A one-token decode step of a small model is mostly weight streaming plus many tiny ops:
in eager mode each layer dispatches about thirty of them (norms, RoPE, reshapes, the cache
write, SwiGLU, residual adds), each paying Python and dispatcher overhead and reading
activations that the weight stream has pushed out of cache. Inductor fuses the elementwise
ops between projections into a few generated C++ loops; the projections stay oneDNN
products (`lmforge::linear`, see `lmforge.model.linear`). Measured on SmolLM2 in fp32
(2 threads, AVX2 EPYC): 41.5 → 35.3 ms per batch-1 token.

Only decode steps are compiled (one new token per row); prefills stay eager, since their
blocked attention loops over the prompt length. The first graph is specialised to its
shapes; the next cache length compiles once more with lengths symbolic, and so does the
first change of batch size, so a graph serves every length, not one per step. Loading
with `compile=True` pays this up front (about a minute on two cores, seconds once Inductor's
on-disk cache has the graphs). Another change that Dynamo's guards see (ragged rows,
non-contiguous slots) compiles once more; past the recompilation limit a step runs eagerly.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

import torch

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer

_compiled: weakref.WeakKeyDictionary[Transformer, Callable] = weakref.WeakKeyDictionary()
_models = itertools.count(1)  # models compiled so far (Dynamo keeps their graphs)
RECOMPILES = 8  # per model: shapes, ragged or not, contiguous rows or not, batch sizes


def compile_decode(model: Transformer, warm_up: bool = True) -> None:
    """Make `decode_step` run `model` through torch.compile from now on; `warm_up` compiles
    at once (a short greedy generation) rather than during the first answer."""
    if model.config.family == "encoder":
        raise LmforgeError("compiling decode steps is for models that generate; this is an "
                           "encoder (it fills [MASK] in one pass)")
    if model in _compiled:
        return
    # Dynamo counts recompilations per code object, so every model compiled here shares one
    # budget (Transformer.forward's): give each model its own eight
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILES * next(_models))
    # dynamic=None: the first graph is specialised, the recompilation on the next cache length
    # makes lengths symbolic; batch sizes stay static until one changes (the batch-8
    # decode is 7% faster with a static batch than with every size symbolic)
    _compiled[model] = torch.compile(model.forward, dynamic=None)
    if warm_up:
        from lmforge.generate.config import GenerationConfig
        from lmforge.generate.engine import Rows, generate_ids

        config = GenerationConfig(max_tokens=3, min_tokens=3, temperature=0)
        for _ in generate_ids(model, [[0, 0]], config, [], Rows([None])):
            pass


def decode_forward(model: Transformer) -> Callable:
    """The callable a decode step runs: the compiled forward, or the model itself."""
    return _compiled.get(model, model)
