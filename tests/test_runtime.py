"""The CPU allocator tuning (runtime.tune_allocator), checked in fresh processes
since the setting is process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="the allocator tuning applies to glibc Linux only")

# Allocate 8 MiB with libc's malloc and report how many blocks glibc serves by
# mmap (mallinfo2().hblks): 1 under the default 128 KiB threshold, 0 once the
# threshold is 64 MiB.
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from genrnn.runtime import make_runtime, tune_allocator
    libc = ctypes.CDLL("libc.so.6")
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    if sys.argv[1] == "runtime":
        make_runtime("cpu")
    first = tune_allocator()
    again = tune_allocator()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    hblks = None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = MallInfo2
        before = libc.mallinfo2().hblks
        p = libc.malloc(8 << 20)
        hblks = libc.mallinfo2().hblks - before
        libc.free(p)
    print(json.dumps({"tuned": first, "again": again, "mmapped_blocks": hblks}))
""")


def probe(how: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, how], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_cpu_runtime_keeps_large_blocks_in_the_heap():
    r = probe("runtime", GENRNN_MALLOC_TUNING="1")
    assert r["tuned"] is True and r["again"] is True
    if r["mmapped_blocks"] is not None:  # glibc >= 2.33
        assert r["mmapped_blocks"] == 0


@glibc
def test_tuning_can_be_turned_off():
    r = probe("runtime", GENRNN_MALLOC_TUNING="0")
    assert r["tuned"] is False and r["again"] is False
    if r["mmapped_blocks"] is not None:
        assert r["mmapped_blocks"] == 1  # glibc's default: an 8 MiB block is its own mapping


def test_tune_allocator_is_harmless_anywhere():
    # off glibc it must simply report False; on glibc, True
    r = probe("direct")
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert r["tuned"] is expected
