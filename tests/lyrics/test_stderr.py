"""stderr_caught: what C code and child processes write to file descriptor 2 is caught, and the
descriptor is restored afterwards, also when the block raises."""

import os
import subprocess
import sys

import pytest

from lyrics.stderr import stderr_caught


def test_writes_to_descriptor_2_are_caught_and_the_descriptor_restored(capfd):
    with stderr_caught() as caught:
        os.write(2, b"from C\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child\\n')"], check=True)
    assert caught.text == "from C\nfrom a child\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_the_descriptor_is_restored_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="boom"), stderr_caught() as caught:
        os.write(2, b"before the error\n")
        raise RuntimeError("boom")
    assert caught.text == "before the error\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
