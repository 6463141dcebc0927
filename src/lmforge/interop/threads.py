"""Run conversions on one thread: format conversion is memory-bound copying, and sharing cores.

On a machine whose cores are busy with other work, every OpenMP parallel region waits for a
descheduled worker thread. Measured on 2 shared cores: `torch.cat` of 30 pairs of
(1536, 576) matrices took 0.46 s with 2 threads and 0.03 s with 1; loading SmolLM2 took
5-27 s instead of 0.7 s. On an idle machine the second thread saves ~10%, not worth that risk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on the calling thread only, then restore the thread count.

    Also a decorator (`@single_threaded()`). The setting is process-wide: other Python threads
    running torch meanwhile are single-threaded too until the block ends.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
