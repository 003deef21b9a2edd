"""Metric throughput: images per second of each evaluation metric on this machine, with random-init weights
of the real architectures (a benchmark, not a test; the scores mean nothing, the cost is the real one).

    fid_inception  clean-fid's preprocessing (PIL bicubic to 299 px) + torchvision's Inception-v3 (2048-d)
    clip_score     open_clip ViT-L-14-quickgelu, image and prompt towers
    hps            HPSv2: open_clip ViT-H-14
    pickscore      transformers CLIPModel with PickScore's (CLIP-H) configuration
    image_reward   ImageReward's BLIP (ViT-L) + MED text encoder and its MLP head

Each gets one warm-up call on 1 image, then `repeats` timed calls on `batch` 512x512 images with prompts;
the figure is the median. The model build time is reported apart (random init, not loading weights).
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np


def _builders():
    def fid():
        from evals.fid import random_inception_extractor

        ex = random_inception_extractor(seed=0, batch_size=64)
        return lambda imgs, prompts: ex.features_from_arrays(imgs)

    def clip():
        from evals.clip_score import ClipScore

        m = ClipScore(random_init=True)
        return m.score

    def hps():
        from evals.hps import HPSv2

        m = HPSv2(random_init=True)
        return m.score

    def pick():
        from evals.pickscore import PickScore

        m = PickScore(random_init=True)
        return m.score

    def ir():
        from evals.image_reward import ImageRewardScore

        m = ImageRewardScore(random_init=True)
        return m.score

    return {"fid_inception": fid, "clip_score": clip, "hps": hps, "pickscore": pick, "image_reward": ir}


def time_metrics(batch: int = 8, repeats: int = 3, size: int = 512, names=None, log=print) -> list[dict]:
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    prompts = [f"a photo of a cat number {i}" for i in range(batch)]
    rows = []
    for name, build in _builders().items():
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        score = build()
        built = time.perf_counter() - t0
        score(images[:1], prompts[:1])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            score(images, prompts)
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        rows.append({"metric": name, "batch": batch, "image_size": size, "repeats": repeats,
                     "seconds_per_batch": round(s, 3), "images_per_second": round(batch / s, 3),
                     "build_seconds": round(built, 2)})
        log(f"  {name}: {rows[-1]['images_per_second']} images/s")
        del score
        gc.collect()
    return rows
