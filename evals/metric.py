"""The common interface of every evaluation metric and its results.

* `Metric`: ``compute(samples, reference=None) -> MetricResult``. A `MetricResult` is a plain
  ``dict[str, float]`` of values that also carries ``intervals`` (95 % intervals, name -> (lo, hi)),
  ``num_samples`` and, for per-image scores, the ``per_sample`` array.
* Intervals: percentile bootstrap over samples for distribution metrics (FID, KID, FID-T, patch
  FID-T, `bootstrap_interval`); mean +- 1.96 * standard error for per-image scores (`mean_interval`).
* `PromptImageScore`: the base of the per-image text-image scores.

The metric modules (evals.fid, evals.clip_score, ...) build on this; the registry that names and builds
them is evals.metrics. This module imports neither torch nor any model library.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .sample_set import SampleSet

__all__ = ["MetricResult", "Metric", "PromptImageScore", "mean_interval", "bootstrap_interval", "to_pil_list"]


class MetricResult(dict):
    """``dict[str, float]`` of metric values, plus ``intervals`` (name -> (lo, hi), 95 %),
    ``num_samples`` (images used) and ``per_sample`` (name -> (N,) array, per-image scores only)."""

    def __init__(self, values: Mapping[str, float], intervals: Mapping[str, tuple[float, float]] | None = None,
                 num_samples: int | None = None, per_sample: Mapping[str, np.ndarray] | None = None):
        super().__init__({k: float(v) for k, v in values.items()})
        self.intervals = {k: (float(lo), float(hi)) for k, (lo, hi) in (intervals or {}).items()}
        self.num_samples = num_samples
        self.per_sample = dict(per_sample or {})


def mean_interval(values: Sequence[float] | np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """(mean, lo, hi) with lo/hi = mean -+ z * sample std / sqrt(n); a single value gives lo = hi = mean."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values")
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    h = z * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - h, m + h


def bootstrap_interval(stat: Callable[[np.random.Generator], float], n_boot: int, seed: int = 0,
                       alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``stat(rng)`` (which draws its own resample from ``rng``).

    Returns None for ``n_boot < 2``. Deterministic for a given seed.
    """
    if n_boot < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size < 2:
        return None
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


class Metric(ABC):
    """A metric over a `SampleSet`. ``name`` is the key of its main value; ``needs_reference``
    tells whether ``compute`` needs a reference set (real images or teacher samples)."""

    name: str = "metric"
    higher_is_better: bool = True
    needs_reference: bool = False

    @abstractmethod
    def compute(self, samples: SampleSet, reference: SampleSet | None = None) -> MetricResult:
        """Values (at least ``self.name``) with 95 % intervals where meaningful."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PromptImageScore(Metric):
    """Base of per-image text-image scores (CLIP score, HPS, PickScore, ImageReward).

    Subclasses implement ``score(images, prompts) -> (B,) float64``, with ``images`` a list of
    PIL RGB images; ``compute`` runs it over a SampleSet in batches of ``batch_size`` and reports the
    mean with mean +- 1.96 * sem, plus the per-image scores in ``result.per_sample[name]``.
    """

    batch_size: int = 16

    @abstractmethod
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        """(B,) scores of B (image, prompt) pairs; images are PIL images or uint8 (H, W, 3) arrays."""

    def compute(self, samples: SampleSet, reference: SampleSet | None = None) -> MetricResult:
        if len(samples) == 0:
            raise ValueError(f"{samples.root}: empty sample set")
        if any(p is None for p in samples.prompts):
            raise ValueError(f"{self.name}: every sample needs its prompt (manifest.jsonl in {samples.root})")
        scores = []
        for b in range(0, len(samples), self.batch_size):
            idx = range(b, min(b + self.batch_size, len(samples)))
            imgs = [_pil(samples.image(i)) for i in idx]
            scores.append(np.asarray(self.score(imgs, [samples[i].prompt for i in idx]), dtype=np.float64).ravel())
        per = np.concatenate(scores)
        m, lo, hi = mean_interval(per)
        return MetricResult({self.name: m}, {self.name: (lo, hi)} if len(per) > 1 else {}, num_samples=len(per),
                            per_sample={self.name: per})


def _pil(img: Any):
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(a).convert("RGB")


def to_pil_list(images: Sequence[Any]) -> list:
    """PIL RGB images from PIL images or uint8 (H, W), (H, W, 1), (H, W, 3) arrays."""
    return [_pil(i) for i in images]
