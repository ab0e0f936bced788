"""Is resume exact on CUDA? Compare (a) two identical uninterrupted runs and
(b) an uninterrupted run against one stopped by Ctrl-C and resumed.

    python benchmarks/gpu_resume_check.py CORPUS OUT [--deterministic]

--deterministic trains with genrnn's ``deterministic=True`` (deterministic
cuBLAS/cuDNN kernels; without it cuDNN's RNN kernels may differ run to run, see
PyTorch's reproducibility notes). The runs use inter-layer dropout, which
genrnn draws from PyTorch's generator so that resume can restore it.
"""

import signal
import sys

import torch

import genrnn
from genrnn.trainer import Callbacks


class InterruptAt(Callbacks):
    def __init__(self, step):
        self.step = step

    def on_log(self, m):
        if m["step"] == self.step:
            signal.raise_signal(signal.SIGINT)


def weights(run_dir):
    return torch.load(f"{run_dir}/resume.pt", weights_only=True)["model"]


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


corpus, out = sys.argv[1], sys.argv[2]
tag = "deterministic" if "--deterministic" in sys.argv else "default"
opts = dict(max_steps=400, eval_every=200, sample_every=0, dropout=0.1, state_span=4,
            deterministic="--deterministic" in sys.argv)
genrnn.train(corpus, out=f"{out}/{tag}-a", **opts)
genrnn.train(corpus, out=f"{out}/{tag}-b", **opts)
genrnn.train(corpus, out=f"{out}/{tag}-c", callbacks=InterruptAt(170), **opts)
genrnn.train(resume=f"{out}/{tag}-c")
a, b, c = weights(f"{out}/{tag}-a"), weights(f"{out}/{tag}-b"), weights(f"{out}/{tag}-c")
print(f"{tag}: two uninterrupted runs differ by {max_diff(a, b):.3g}; "
      f"interrupted at 170 + resumed vs uninterrupted: {max_diff(a, c):.3g}", flush=True)
