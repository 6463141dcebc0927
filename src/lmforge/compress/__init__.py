"""Compression: weight quantization (int8, int4, fp8; round-to-nearest and GPTQ) and the
layers and checkpoints that run quantized weights."""
