"""One place for device, precision and threads.

``auto`` picks CUDA, then Apple's MPS, then the CPU. ``auto`` precision is
float32 everywhere, with TF32 matrix products on CUDA: measured on an H100
(docs/benchmarks.md), bf16 autocast made LSTM training *slower* (2x256:
466k vs 582k tokens/s; 3x1024: 627k vs 716k), since cuDNN's recurrent kernels
are bound by the sequential steps, not by arithmetic. ``--precision bf16``
(autocast) and ``fp16`` (autocast + gradient scaler, CUDA only) remain for
models where it pays.

On the CPU, ``make_runtime`` also tunes glibc's allocator (``tune_allocator``):
by default glibc hands every large block (the one-hot inputs, the gate and
logit activations of a training step) back to the kernel when it is freed and
takes fresh zeroed pages for the next step. Keeping them in the heap trained
the default 2x256 model 1.27x faster on the 2-core benchmark machine, and the
lesson's 1x64 model 1.03-1.4x faster depending on the run (docs/benchmarks.md). ``GENRNN_MALLOC_TUNING=0``
leaves the allocator alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

from .errors import GenrnnError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: Optional[torch.dtype]  # autocast dtype, None for float32

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def describe(self) -> str:
        name = self.device.type
        if name == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        elif name == "cpu":
            name = f"cpu ({torch.get_num_threads()} threads)"
        return f"{name}, {'float32' if self.dtype is None else str(self.dtype).replace('torch.', '')}"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenrnnError("--device cuda was asked for, but PyTorch sees no CUDA GPU (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GenrnnError("--device mps was asked for, but MPS is not available (try --device auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise GenrnnError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap, not fresh mmap pages
_TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is returned
_allocator_tuned: Optional[bool] = None


def tune_allocator() -> bool:
    """Keep large freed blocks in the process heap instead of unmapping them.

    glibc's default returns blocks above its mmap threshold to the kernel on
    ``free``; a training step allocates and frees the same few megabyte-sized
    tensors every step, and each time the kernel must fault in and zero fresh
    pages. Fixed thresholds (64 MiB mmap, 256 MiB trim) keep them reusable.
    Process-wide and idempotent; a no-op off glibc Linux or with
    ``GENRNN_MALLOC_TUNING=0``. Returns whether the thresholds are in place."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("GENRNN_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _allocator_tuned


def make_runtime(device: str = "auto", precision: str = "auto", threads: Optional[int] = None,
                 deterministic: bool = False) -> Runtime:
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS and cuDNN otherwise may pick kernels whose sums vary run to run;
        # the workspace setting must be in place before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision in ("auto", "fp32"):
        dtype = None
    elif precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "fp16":
        if dev.type != "cuda":
            raise GenrnnError("--precision fp16 needs a CUDA GPU; use bf16 or fp32")
        dtype = torch.float16
    else:
        raise GenrnnError(f"unknown precision {precision!r}")
    return Runtime(dev, dtype)
