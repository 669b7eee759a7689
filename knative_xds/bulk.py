"""Building a large, long-lived state: the cyclic garbage collector kept out of the way."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def bulk_allocation() -> Iterator[None]:
    """Build a large, long-lived state without the cyclic garbage collector in the way.

    Loading 10,000 revisions allocates hundreds of thousands of objects that live
    on; the collector would rescan them over and over while they are built (about
    a third of the load, measured) and again, as its oldest generation, during
    later edits. It is paused meanwhile, and what was built is then frozen out of
    its reach (reference counting still frees it when it is dropped).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if paused:
            gc.enable()
