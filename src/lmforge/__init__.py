"""lmforge: a large language model system end to end, fast on a CPU."""

__version__ = "0.1.0"
