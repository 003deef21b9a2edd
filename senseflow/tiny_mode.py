"""Tiny mode (`model.tiny: true`): smoke-test any preset on a CPU without weights.

The tiny random-init architectures (senseflow.models.tiny) and the tiny DINOv2 (senseflow.discriminators,
4 blocks) are far smaller than the real ones, so every setting that depends on size must follow them or the
run fails (the paper's DINOv2-L layers [2, ..., 23] on a 4-block backbone, a 299 px patch-FID crop of a
32 px image, 5000 evaluation samples on a CPU). This module is the one place that adapts them: `adapt`
rewrites a config mapping before validation and returns one line per change, which the run prints and
records in status.json (`tiny_mode`). Settings that already fit are left alone, so adapting is idempotent
and an explicit small value (e.g. gan.layers=[1, 3]) is kept.
"""

from __future__ import annotations

import copy
from typing import Any

from senseflow.backbones import TINY_DEPTH

RESOLUTION = 32          # pixels of the tiny families' images (latents 16x16)
MAX_RESOLUTION = 64      # tiny models handle up to this; larger settings drop to RESOLUTION
EVAL_SAMPLES = 8         # evaluation samples per sampler (FID-type metrics on random features: smoke only)
TINY_BACKBONE = "tiny-random"  # senseflow.discriminators.TINY_BACKBONE


def applies(data: dict[str, Any]) -> bool:
    model = data.get("model")
    return (isinstance(model, dict) and model.get("tiny") is True
            and model.get("family", "digits") in ("sd3", "flux", "sdxl"))


def adapt(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(adapted copy, changes as 'key: old -> new (why)') for a config mapping with model.tiny true."""
    if not applies(data):
        return data, []
    out = copy.deepcopy(data)
    changes: list[str] = []

    def section(name: str) -> dict[str, Any]:
        node = out.get(name)
        if not isinstance(node, dict):
            node = out[name] = {}
        return node

    def change(sec: str, key: str, new: Any, why: str, default: Any = None) -> None:
        node = section(sec)
        old = node.get(key, default)
        if old != new:
            node[key] = new
            changes.append(f"{sec}.{key}: {old!r} -> {new!r} ({why})")

    model = section("model")
    res = model.get("resolution", 1024)
    if isinstance(res, int) and not isinstance(res, bool) and res > MAX_RESOLUTION:
        change("model", "resolution", RESOLUTION, "tiny models draw 32 px images", 1024)
    res = model.get("resolution", RESOLUTION)

    gan = section("gan")
    if gan.get("kind", "vfm") == "vfm":
        change("gan", "backbone", TINY_BACKBONE, f"a random {TINY_DEPTH}-block DINOv2", "facebook/dinov2-large")
        layers = gan.get("layers")
        if isinstance(layers, list) and any(not isinstance(i, int) or not -TINY_DEPTH <= i < TINY_DEPTH
                                            for i in layers):
            change("gan", "layers", None, f"the preset's blocks do not exist in {TINY_DEPTH} blocks; "
                                          "None spreads the heads over them")

    ev = section("eval")
    patch = ev.get("patch_size", 299)
    if isinstance(patch, int) and isinstance(res, int) and patch > res:
        change("eval", "patch_size", res, "the patch-FID crop must fit the image", 299)
    n = ev.get("num_samples", 2000)
    if isinstance(n, int) and n > EVAL_SAMPLES:
        change("eval", "num_samples", EVAL_SAMPLES, "smoke evaluation", 2000)
    bs = ev.get("batch_size", 250)
    if isinstance(bs, int) and bs > EVAL_SAMPLES:
        change("eval", "batch_size", EVAL_SAMPLES, "smoke evaluation", 250)

    if section("optim").get("eight_bit") is True:
        change("optim", "eight_bit", False, "8-bit AdamW needs bitsandbytes on a GPU; tiny runs on a CPU")
    return out, changes
