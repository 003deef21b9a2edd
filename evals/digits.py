"""Metrics of the digits world, in the feature space of the world's evaluation classifier.

Every function takes images (N, 1, 8, 8) in [-1, 1] (clamped to it before the classifier) and the
`DigitsWorld` (anything with `.classifier` having `features` / `predict`, and for FID `.data` /
`.reference`).

* FID: clean-fid's Frechet distance (`cleanfid.fid.frechet_distance`) between the Gaussian fits of the two
  feature sets, with a 95% bootstrap interval (percentile interval shifted by the bootstrap's bias; paired
  resampling for FID-T; see `fid_from_features` for how well each kind is calibrated).
* FID against held-out real digits (`fid_real`), and FID-T against the teacher's cached reference samples
  on the same held-out prompts and seeds (`fid_t`). The teacher's own floor is `world.figures`'
  `teacher_fid_floor` (two independent teacher sample sets).
* Prompt accuracy: share of samples the classifier labels as the prompted digit.
* Per-prompt diversity: mean pairwise L2 distance between the classifier features of samples that share a
  prompt, averaged over prompts (0 = every seed gives the same image).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

Tensor = torch.Tensor


class DigitsWorld(Protocol):
    """What these metrics read of a world (senseflow.worlds.digits.DigitsWorld has it; this module does not
    import the world, which computes its own figures with these metrics)."""

    classifier: Any   # features(images) -> (N, D), predict(images) -> (N,) labels
    data: Any         # .held_out.images: the held-out real digits
    reference: Any    # .samples, .prompts, .labels: the teacher's reference set
    config: Any       # .reference.bootstrap: default bootstrap resamples


@dataclass(frozen=True)
class FIDResult:
    """FID with its 95% bootstrap interval (low, high are None without bootstrap)."""

    value: float
    low: float | None
    high: float | None
    n_a: int
    n_b: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:.2f}"
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _check_images(images: Tensor) -> Tensor:
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits images must be (N, 1, 8, 8) in [-1, 1], got shape {tuple(images.shape)}")
    return images.detach().float().cpu().clamp(-1, 1)


def classifier_features(images: Tensor, world: DigitsWorld) -> np.ndarray:
    """(N, D) float64 penultimate features of the evaluation classifier."""
    return world.classifier.features(_check_images(images)).double().numpy()


def _gaussian(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """clean-fid's Frechet distance between Gaussian fits of two (N, D) feature sets."""
    import warnings

    from cleanfid.fid import frechet_distance as clean_frechet

    mu_a, cov_a = _gaussian(feats_a)
    mu_b, cov_b = _gaussian(feats_b)
    with warnings.catch_warnings():  # near-singular covariances (few samples) only make sqrtm warn
        warnings.simplefilter("ignore")
        return float(clean_frechet(mu_a, cov_a, mu_b, cov_b))


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, bootstrap: int = 200, seed: int = 0,
                      level: float = 0.95, resample: str = "both") -> FIDResult:
    """FID and a bias-shifted percentile-bootstrap interval.

    resample: "paired" (the same indices in both sets: for index-aligned sets, i.e. the same prompts and seeds,
        as FID-T), "first" (only `feats_a`; `feats_b` is a fixed yardstick such as the held-out real digits) or
        "both" (each set independently).
    Resampling duplicates samples, which alone raises FID, so the raw percentile interval can lie entirely
    above the estimate; the interval is the percentile interval moved by the bootstrap's bias
    mean(boot) - FID (the lower end clipped at 0).

    Calibration, measured in the default digits world (2000 samples, 64-d features): for FID-T the paired
    bootstrap's spread matches the spread over fresh seeds (std 0.045 vs 0.05); "first" is about 2x wider than
    the spread over fresh seeds (teacher vs real: 0.9 vs 0.45) and "both" 5-15x wider, because near-zero FIDs
    are dominated by a finite-sample bias whose resampling noise exceeds the seed-to-seed noise. Read
    unpaired intervals as conservative.
    """
    if resample not in ("paired", "first", "both"):
        raise ValueError(f"resample={resample!r}: expected 'paired', 'first' or 'both'")
    if resample == "paired" and len(feats_a) != len(feats_b):
        raise ValueError(f"paired resampling needs index-aligned sets of equal size, got {len(feats_a)} and "
                         f"{len(feats_b)}")
    value = frechet_distance(feats_a, feats_b)
    low = high = None
    if bootstrap >= 2:
        rng = np.random.default_rng(seed)
        vals = []
        for _ in range(bootstrap):
            ia = rng.integers(0, len(feats_a), len(feats_a))
            if resample == "paired":
                ib = ia
            elif resample == "first":
                ib = np.arange(len(feats_b))
            else:
                ib = rng.integers(0, len(feats_b), len(feats_b))
            vals.append(frechet_distance(feats_a[ia], feats_b[ib]))
        vals = np.asarray(vals)
        bias = float(vals.mean()) - value
        alpha = (1 - level) / 2
        q_lo, q_hi = (float(q) for q in np.quantile(vals, [alpha, 1 - alpha]))
        low, high = max(0.0, q_lo - bias), q_hi - bias
    return FIDResult(value, low, high, len(feats_a), len(feats_b))


def fid(images: Tensor, reference: Tensor, world: DigitsWorld, bootstrap: int | None = None,
        seed: int = 0, resample: str = "both") -> FIDResult:
    """FID between two image sets in the classifier's feature space (see `fid_from_features` for `resample`)."""
    b = world.config.reference.bootstrap if bootstrap is None else bootstrap
    return fid_from_features(classifier_features(images, world), classifier_features(reference, world), b, seed,
                             resample=resample)


def fid_real(images: Tensor, world: DigitsWorld, bootstrap: int | None = None, seed: int = 0) -> FIDResult:
    """FID against the held-out real digits (a fixed yardstick: only `images` are resampled)."""
    return fid(images, world.data.held_out.images, world, bootstrap, seed, resample="first")


def fid_t(images: Tensor, world: DigitsWorld, bootstrap: int | None = None, seed: int = 0) -> FIDResult:
    """FID-T: against the teacher's cached reference samples. `images[i]` must come from
    `world.reference.prompts[i]` and `world.reference.noise[i]` (same prompts and seeds); paired bootstrap."""
    ref = world.reference.samples
    if images.shape[0] != ref.shape[0]:
        raise ValueError(f"FID-T compares with the {ref.shape[0]} teacher reference samples on the same prompts and "
                         f"seeds; got {images.shape[0]} images (sample from world.reference.prompts / .noise)")
    return fid(images, ref, world, bootstrap, seed, resample="paired")


def prompt_accuracy(images: Tensor, labels: Tensor | list[int], world: DigitsWorld) -> float:
    """Share of images the classifier labels as their prompted digit."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    pred = world.classifier.predict(_check_images(images))
    return float((pred == labels).float().mean())


def per_prompt_diversity(images: Tensor, prompts: list[str], world: DigitsWorld) -> dict:
    """Mean pairwise feature distance among samples of the same prompt: {"mean": float, "per_prompt": {prompt: d}}.
    Prompts with a single sample are skipped."""
    feats = torch.as_tensor(classifier_features(images, world))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    per = {}
    for p, idx in groups.items():
        if len(idx) < 2:
            continue
        f = feats[idx]
        d = torch.cdist(f, f)
        n = len(idx)
        per[p] = float(d.sum() / (n * (n - 1)))
    mean = float(np.mean(list(per.values()))) if per else float("nan")
    return {"mean": mean, "per_prompt": per}


def evaluate_samples(images: Tensor, world: DigitsWorld, prompts: list[str] | None = None,
                     labels: Tensor | list[int] | None = None, bootstrap: int | None = None) -> dict:
    """All digits metrics for samples drawn on the world's reference prompts and seeds (the default) or on
    given prompts/labels (then FID-T is left out unless the count matches the reference)."""
    ref = world.reference
    prompts = ref.prompts if prompts is None else prompts
    labels = ref.labels if labels is None else labels
    out = {
        "prompt_accuracy": prompt_accuracy(images, labels, world),
        "fid": fid_real(images, world, bootstrap).as_dict(),
        "diversity": per_prompt_diversity(images, prompts, world)["mean"],
    }
    if images.shape[0] == ref.samples.shape[0] and list(prompts) == list(ref.prompts):
        out["fid_t"] = fid_t(images, world, bootstrap).as_dict()
    return out
