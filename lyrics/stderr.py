"""Output written straight to file descriptor 2, caught.

Some libraries write there without going through Python's `sys.stderr` (Ray's C++ logger, the Java
processes pycocoevalcap starts), so neither `logging` nor `warnings` reaches it. Where such output is
only chatter, it is caught here and kept for an error message instead of reaching the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class Caught:
    """What the block wrote to file descriptor 2 (complete once the block has ended)."""

    text: str = ""


@contextmanager
def stderr_caught() -> Iterator[Caught]:
    """File descriptor 2 into a temporary file for the block; its text is in the yielded `Caught` after it."""
    caught = Caught()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            yield caught
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            caught.text = file.read().decode("utf-8", "replace")
