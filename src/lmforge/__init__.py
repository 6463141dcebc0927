"""lmforge: a large language model system end to end, fast on a CPU."""

from lmforge.api import LoadedModel, load
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig

__version__ = "0.1.0"
__all__ = ["GenerationConfig", "LmforgeError", "LoadedModel", "load"]
