"""Wall-clock time of work on a device: on a CUDA GPU the host only queues kernels, so a reading first waits
for the device to finish what was queued (`torch.cuda.synchronize`); on the CPU it is `time.perf_counter`.

Every timed section of the benchmarks starts and ends with `now(device)`. On a GPU that synchronizes at
each section's edges, so the host cannot run ahead into the next section while the device works: the
sections' times add up to the whole, at the cost of the overlap a free-running iteration would have (the
benchmarks report that cost as part of an iteration's overhead, never as part of its limit).
"""

from __future__ import annotations

import time

import torch


def now(device: torch.device | str = "cpu") -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
