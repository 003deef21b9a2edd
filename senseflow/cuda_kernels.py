"""Which CUDA kernels a run may use, set once before its first CUDA work (`configure`).

torch's scaled_dot_product_attention picks one of several fused kernels. cuDNN's (preferred on Hopper GPUs by
recent torch) failed in the backward pass of the DMD2 generator step on FLUX on an NVIDIA H200 with torch
2.11 (cuDNN's "mha_graph.execute(...).is_good()" check under CUDA_LAUNCH_BLOCKING=1; an illegal memory access
without it), in bf16 autocast, while the same step in fp32 (no cuDNN attention) and every SD3 and SenseFlow
step ran. `configure` turns the cuDNN kernel off, so attention runs on the flash and memory-efficient
kernels, as on older torch; the others are left as torch chooses. docs/FIDELITY.md ("GPU kernels") keeps
the measurement.
"""

from __future__ import annotations

import torch


def configure() -> None:
    """Before a run's first CUDA work: no cuDNN attention (see the module docstring)."""
    torch.backends.cuda.enable_cudnn_sdp(False)
