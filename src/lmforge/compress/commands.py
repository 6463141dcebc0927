"""`lmforge quantize`: a model in, a quantized checkpoint directory out.

    lmforge quantize --model smollm2 --scheme int8 --out smollm2-int8
    lmforge quantize --model smollm2 --scheme int4-g32 --method gptq \\
        --calib ../shared/data/wikitext-2/train.txt --calib-samples 128 --calib-len 512 \\
        --out smollm2-int4-gptq
    lmforge generate --model smollm2-int4-gptq --prompt "The capital of France is"

It prints the products the layers run (`compress/linear.py`), the sizes (the source on disk,
the model in fp32, the quantized directory) and the time taken. Only argparse is imported at
the top; torch and the model load inside the command.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

SCHEME_HELP = ("int8 (per output channel), w8a8 (int8 weights and activations), int8-g32, "
               "int4-g32 | int4-g64 | int4-g128 (groups of inputs, scale and zero point), "
               "fp8-e4m3 | fp8-e5m2 (per channel; add -tensor for one scale per tensor)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `quantize` to the `lmforge` subcommands."""
    q = sub.add_parser(
        "quantize", help="quantize a model's projections (int8, int4, fp8; round to nearest "
                         "or GPTQ) into a checkpoint every command loads",
        description="Replaces every projection but the skipped ones by a quantized layer and "
                    "writes an lmforge checkpoint directory (packed weights + scales, "
                    "config.json with a quantization section). The token embedding, a tied "
                    "LM head and the norms stay in floating point. See docs/quantization.md.")
    q.add_argument("--model", required=True, help="the float model: a built-in name, a .gguf "
                   "file, or a Hugging Face / lmforge directory")
    q.add_argument("--scheme", required=True, help=SCHEME_HELP)
    q.add_argument("--method", default="rtn", choices=["rtn", "gptq"],
                   help="rtn: round to nearest (default); gptq: error-compensating (Frantar "
                        "et al., 2022), needs --calib")
    q.add_argument("--calib", default=None, metavar="FILE",
                   help="gptq: a UTF-8 text file to draw calibration windows from")
    q.add_argument("--calib-samples", type=int, default=128, metavar="N",
                   help="gptq: calibration windows (default 128)")
    q.add_argument("--calib-len", type=int, default=512, metavar="L",
                   help="gptq: tokens per window (default 512)")
    q.add_argument("--skip", action="append", default=None, metavar="PATTERN",
                   help="projections to keep in floating point, by name or name ending "
                        "(repeatable; default lm_head, ffn.router, ffn.noise)")
    q.add_argument("--head", action="store_true",
                   help="also quantize the token embedding (int8 per row) and with it a tied "
                        "LM head (an untied one in --scheme); off: both stay in fp32")
    q.add_argument("--out", required=True, help="the checkpoint directory to write")
    q.add_argument("--force", action="store_true",
                   help="replace --out when it is not empty (once the new one is complete)")
    q.set_defaults(func=cmd_quantize)


@dataclass
class Report:
    """What `quantize` did, for the command to print."""

    scheme: str
    method: str
    kernels: dict[str, int]  # product name → layers
    source_bytes: int  # the model as it lies on disk
    fp32_bytes: int  # its tensors in fp32
    out_bytes: int  # the quantized tensors (model.safetensors, without the tokenizer)
    seconds: float

    def lines(self) -> list[str]:
        mb = 1e6
        return [
            f"quantized to {self.scheme} ({self.method}) in {self.seconds:.1f} s",
            "kernels: " + ", ".join(f"{k} × {n}" for k, n in sorted(self.kernels.items())),
            f"size: source {self.source_bytes / mb:.1f} MB on disk; tensors "
            f"{self.fp32_bytes / mb:.1f} MB in fp32 → {self.out_bytes / mb:.1f} MB "
            f"({100 * self.out_bytes / self.fp32_bytes:.0f}%)",
        ]


def disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def quantize(spec: str, scheme: str, out: str | Path, method: str = "rtn",
             calib: str | None = None, calib_samples: int = 128, calib_len: int = 512,
             skip: list[str] | None = None, force: bool = False, progress: bool = True,
             head: bool = False) -> Report:
    """Quantize the model `spec` and write it to `out` (the steps of `lmforge quantize`)."""
    from lmforge.api import build_model
    from lmforge.compress.checkpoint import SECTION, save_quantized
    from lmforge.compress.quantize import SKIP, quantize_model, quantized_layers
    from lmforge.compress.schemes import Scheme
    from lmforge.interop.load import load_weights, resolve_model
    from lmforge.io import write_directory

    parsed = Scheme.parse(scheme)  # a bad name fails before the model loads
    if (method == "gptq") != (calib is not None):
        raise LmforgeError("--method gptq needs --calib FILE (calibration text), and --calib "
                           "goes with --method gptq only")
    if calib is not None and not Path(calib).is_file():
        raise LmforgeError(f"--calib {calib}: no such file")
    start = time.perf_counter()
    source = resolve_model(spec)
    config, state_dict, tokenizer, meta = load_weights(spec)
    if SECTION in meta:
        raise LmforgeError(f"{spec} is already quantized ({meta[SECTION]['scheme']}); "
                           "quantize the float model it came from")
    fp32_bytes = sum(4 * t.numel() for t in state_dict.values())
    model = build_model(config, state_dict)
    del state_dict
    weights = None
    if method == "gptq":
        from lmforge.compress.calibrate import calibration_batches
        from lmforge.compress.gptq import gptq_weights

        if tokenizer is None:
            raise LmforgeError(f"{spec} has no tokenizer, and GPTQ tokenizes its calibration "
                               "text; add tokenizer files to the model")
        batches = calibration_batches(tokenizer, calib, calib_samples, calib_len)
        weights = gptq_weights(model, parsed, batches, progress=progress)
    record = quantize_model(model, parsed, method, weights, skip or list(SKIP), head)
    if method == "gptq":
        record.calibration = {"file": Path(calib).name, "samples": calib_samples,
                              "seq_len": calib_len}
    write_directory(out, lambda tmp: save_quantized(tmp, model, tokenizer, record), force)
    kernels = Counter(m.kernel for m in quantized_layers(model).values())
    return Report(parsed.name, method, dict(kernels), disk_bytes(source.path), fp32_bytes,
                  disk_bytes(Path(out) / "model.safetensors"), time.perf_counter() - start)


def cmd_quantize(args: argparse.Namespace) -> None:
    report = quantize(args.model, args.scheme, args.out, args.method, args.calib,
                      args.calib_samples, args.calib_len, args.skip, args.force,
                      head=args.head)
    for line in report.lines():
        print(line)
    print(f"written: {args.out} (load it with: lmforge generate --model {args.out})")
