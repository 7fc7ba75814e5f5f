"""glibc's mmap threshold stays where it starts, so large buffers go back to the system when freed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from exporter.heap import fix_mmap_threshold, is_glibc

# Run in a child of its own: glibc's count of mapped bytes is the whole process's, and in the test process
# other threads (left by earlier tests: executors, servers) map and unmap blocks between two readings.
CHILD = """
import ctypes, json
from exporter.heap import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

try:
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
except AttributeError:  # glibc before 2.33
    print(json.dumps(None))
    raise SystemExit(0)
mallinfo2.restype = MallInfo2

def mapped():  # bytes glibc holds in blocks mapped on their own
    return int(mallinfo2().hblkhd)

fixed = fix_mmap_threshold()
larger = bytearray(16 * 2**20)
del larger  # unfixed, glibc would now serve anything up to 16 MB from its heap, and keep it when freed
before = mapped()
buffer = bytearray(512 * 1024)
with_buffer = mapped()
del buffer
print(json.dumps({"fixed": fixed, "before": before, "with_buffer": with_buffer, "after": mapped()}))
"""


@pytest.mark.skipif(not is_glibc(), reason="glibc only")
def test_a_large_buffer_is_mapped_on_its_own_after_a_larger_one_was_freed() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    if found is None:
        pytest.skip("glibc before 2.33 has no mallinfo2")
    assert found["fixed"]
    assert found["with_buffer"] - found["before"] >= 512 * 1024
    assert found["after"] <= found["before"]


def test_without_glibcs_mallopt_nothing_is_changed() -> None:
    assert fix_mmap_threshold("libc-that-is-not-here.so.6") is False
