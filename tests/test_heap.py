"""glibc's mmap threshold stays where it starts, so large buffers go back to the system when freed."""

from __future__ import annotations

import ctypes

import pytest

from exporter.heap import fix_mmap_threshold, is_glibc


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mapped_bytes() -> int:
    """Bytes glibc holds in blocks mapped on their own (mallinfo2's hblkhd)."""
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    return int(mallinfo2().hblkhd)


@pytest.mark.skipif(not is_glibc(), reason="glibc only")
def test_a_large_buffer_is_mapped_on_its_own_after_a_larger_one_was_freed() -> None:
    try:
        mapped_bytes()
    except AttributeError:
        pytest.skip("glibc before 2.33 has no mallinfo2")
    assert fix_mmap_threshold()
    larger = bytearray(16 * 2**20)
    del larger  # unfixed, glibc would now serve anything up to 16 MB from its heap, and keep it when freed
    before = mapped_bytes()
    buffer = bytearray(512 * 1024)
    assert mapped_bytes() - before >= len(buffer)
    del buffer
    assert mapped_bytes() <= before


def test_without_glibcs_mallopt_nothing_is_changed() -> None:
    assert fix_mmap_threshold("libc-that-is-not-here.so.6") is False
