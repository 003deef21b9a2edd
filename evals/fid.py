"""FID, KID, FID-T and patch FID-T on top of clean-fid.

* Features come from clean-fid's own loader (``fid.get_files_features``: PNG -> RGB uint8 ->
  resize -> float (B, 3, H, W) in [0, 255] -> extractor) and the math is clean-fid's
  (``fid.fid_from_feats`` / ``frechet_distance``, ``fid.kernel_distance``).
* The default extractor is clean-fid's Inception-v3 TorchScript network loaded from a LOCAL
  ``inception-2015-12-05.pt`` (config key ``eval.weights.inception`` or $SENSEFLOW_INCEPTION_WEIGHTS;
  clean-fid's own /tmp cache is also searched). Nothing is downloaded.
* Any `FeatureExtractor` can replace it (e.g. the digit classifier of the digits world), and
  `tiny_extractor` / `random_inception_extractor` give random-init networks for tests.
* FID-T: FID between the student's samples and the teacher's samples on the SAME (prompt, seed)
  pairs (matched through the manifests). Patch FID-T: the same on fixed-size crops taken at full
  resolution (no downscaling before cropping); ``layout="grid"`` covers the image with
  ceil(H/size) x ceil(W/size) evenly spaced (overlapping when needed) crops, ``"center"`` takes one.
  The paper does not document its crop protocol; 299 px grid crops are our assumption.
* Intervals: 95 % percentile bootstrap over images (paired for FID-T: the same resampled pairs on
  both sides; crops of an image stay together). Each FID replicate costs one matrix square root
  (~20 s single-threaded at 2048 dims), so ``n_bootstrap`` is configurable (0 disables).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .metric import Metric, MetricResult, bootstrap_interval
from .sample_set import SampleSet
from .weights import resolve_weights

__all__ = [
    "FeatureExtractor", "CropSpec", "FeatureCache", "inception_extractor", "random_inception_extractor",
    "tiny_extractor", "no_resize", "fid_from_features", "kid_from_features", "FID", "KID", "FIDT", "PatchFIDT",
]


def no_resize(img: np.ndarray) -> np.ndarray:
    """Resize function that keeps the image as it is (for extractors that take any size)."""
    return img


class FeatureExtractor:
    """A feature network for clean-fid.

    ``fn``: callable or nn.Module mapping float32 (B, 3, H, W) in [0, 255] to (B, D).
    ``resize``: "clean" (clean-fid's PIL bicubic resize to 299 x 299, what Inception expects), or a
    function uint8 (H, W, 3) -> uint8/float32 (h, w, 3) (`no_resize` keeps the size).
    ``name`` identifies it in caches and messages.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str, *, resize: str | Callable = "clean",
                 device: str | torch.device = "cpu", batch_size: int = 64):
        self.fn = fn
        self.name = name
        self.resize = resize
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"FeatureExtractor({self.name!r}, device={self.device})"

    def features_from_files(self, files: Sequence[str | os.PathLike],
                            transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """(N, D) float features of image files through clean-fid's loader (``transform`` runs before resize)."""
        from cleanfid import fid

        if len(files) == 0:
            raise ValueError("no images")
        kw: dict[str, Any] = {}
        if transform is not None:
            kw["custom_image_tranform"] = transform  # (sic) clean-fid's spelling
        return fid.get_files_features([str(f) for f in files], model=self.fn, num_workers=0,
                                      batch_size=self.batch_size, device=self.device, mode="clean",
                                      custom_fn_resize=None if self.resize == "clean" else self.resize,
                                      verbose=False, **kw)

    def features_from_arrays(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) features of in-memory uint8 images (N, H, W, 3), preprocessed like clean-fid's loader."""
        from cleanfid.resize import build_resizer

        resize = build_resizer("clean") if self.resize == "clean" else self.resize
        out = []
        for b in range(0, len(images), self.batch_size):
            batch = []
            for img in images[b:b + self.batch_size]:
                a = np.asarray(img)
                if a.ndim == 2 or a.shape[-1] == 1:
                    a = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2)
                r = resize(a)
                batch.append(torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32)).permute(2, 0, 1))
            with torch.no_grad():
                out.append(self.fn(torch.stack(batch).to(self.device)).detach().cpu().numpy())
        return np.concatenate(out)


# ---------------------------------------------------------------------------- extractors
def inception_extractor(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                        batch_size: int = 64) -> FeatureExtractor:
    """clean-fid's Inception-v3 (2048-d pool features) from a local ``inception-2015-12-05.pt``.

    Raises `MissingWeightsError` naming the file, config key ``eval.weights.inception`` and
    $SENSEFLOW_INCEPTION_WEIGHTS when it is not on this machine.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    file = resolve_weights("inception", path)
    fname = "inception-2015-12-05.pt"
    if file.name == fname:
        model = InceptionV3W(str(file.parent), download=False)
    else:  # clean-fid wants <dir>/inception-2015-12-05.pt
        with tempfile.TemporaryDirectory() as d:
            os.symlink(file.resolve(), os.path.join(d, fname))
            model = InceptionV3W(d, download=False)
    model = model.eval().to(device)
    return FeatureExtractor(model, "inception-2015-12-05", resize="clean", device=device, batch_size=batch_size)


class _RandomInception(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        from torchvision.models import inception_v3

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = inception_v3(weights=None, aux_logits=False, init_weights=True)
        self.net.fc = nn.Identity()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 299, 299) in [0, 255]
        return self.net((x - 128.0) / 128.0)


def random_inception_extractor(seed: int = 0, *, device: str | torch.device = "cpu", batch_size: int = 16
                               ) -> FeatureExtractor:
    """Random-init Inception-v3 (torchvision architecture, 2048-d, 299 px input): the real pipeline
    without weights, for tests. Its FID values mean nothing."""
    return FeatureExtractor(_RandomInception(seed).to(device), f"inception-random-{seed}", resize="clean",
                            device=device, batch_size=batch_size)


class _TinyConvFeatures(nn.Module):
    def __init__(self, dim: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),
                                     nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.GELU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 255] -> (B, dim)
        return self.net(x / 127.5 - 1.0)


def tiny_extractor(dim: int = 16, seed: int = 0, *, device: str | torch.device = "cpu", batch_size: int = 64
                   ) -> FeatureExtractor:
    """Random-init 2-layer conv net -> (B, dim) features at any image size (tests, smoke runs)."""
    return FeatureExtractor(_TinyConvFeatures(dim, seed).to(device), f"tiny-conv-{dim}-{seed}", resize=no_resize,
                            device=device, batch_size=batch_size)


# ---------------------------------------------------------------------------- crops and caching
@dataclass(frozen=True)
class CropSpec:
    """Fixed-size square crops at full resolution. ``layout``: "grid" (cover the image with
    ceil(H/size) x ceil(W/size) evenly spaced crops) or "center" (one crop)."""

    size: int = 299
    layout: str = "grid"

    def __post_init__(self):
        if self.layout not in ("grid", "center"):
            raise ValueError(f"crop layout={self.layout!r}: use 'grid' or 'center'")
        if self.size < 1:
            raise ValueError("crop size must be >= 1")

    def positions(self, h: int, w: int) -> list[tuple[int, int]]:
        """(top, left) of each crop of an h x w image."""
        if h < self.size or w < self.size:
            raise ValueError(f"crop size {self.size} is larger than the image ({h} x {w}); patch FID needs "
                             "full-resolution images at least as large as the crop")
        if self.layout == "center":
            return [((h - self.size) // 2, (w - self.size) // 2)]
        tops = np.round(np.linspace(0, h - self.size, math.ceil(h / self.size))).astype(int)
        lefts = np.round(np.linspace(0, w - self.size, math.ceil(w / self.size))).astype(int)
        return [(int(t), int(l)) for t in tops for l in lefts]


class _CropAt:
    """clean-fid image transform: the k-th crop of a CropSpec."""

    def __init__(self, spec: CropSpec, k: int):
        self.spec, self.k = spec, k

    def __call__(self, img: np.ndarray) -> np.ndarray:
        t, l = self.spec.positions(img.shape[0], img.shape[1])[self.k]
        return np.ascontiguousarray(img[t:t + self.spec.size, l:l + self.spec.size])


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


class FeatureCache:
    """Features per (extractor, files, crop) kept in memory so FID, KID and FID-T on the same set
    extract once. Keys include each file's size and mtime."""

    def __init__(self):
        self._store: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._store)

    def features(self, extractor: FeatureExtractor, files: Sequence[Path], crop: CropSpec | None = None) -> np.ndarray:
        """(N, D) without crop; (N, K, D) with a crop spec (K crops per image, same for all images)."""
        stat = tuple((str(f), os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
        key = (extractor.name, id(extractor.fn), stat, crop)
        if key not in self._store:
            self._store[key] = _extract(extractor, files, crop)
        return self._store[key]


def _extract(extractor: FeatureExtractor, files: Sequence[Path], crop: CropSpec | None) -> np.ndarray:
    if crop is None:
        return extractor.features_from_files(files)
    sizes = {_image_size(f) for f in files}
    if len(sizes) != 1:
        raise ValueError(f"patch FID needs images of one size; found {sorted(sizes)[:4]}")
    h, w = sizes.pop()
    k = len(crop.positions(h, w))
    return np.stack([extractor.features_from_files(files, transform=_CropAt(crop, i)) for i in range(k)], axis=1)


# ---------------------------------------------------------------------------- math (clean-fid)
def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between (N1, D) and (N2, D) feature sets (clean-fid)."""
    from cleanfid import fid

    if len(feats1) < 2 or len(feats2) < 2:
        raise ValueError("FID needs at least 2 images per set")
    return float(fid.fid_from_feats(np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)))


@contextlib.contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def kid_from_features(feats1: np.ndarray, feats2: np.ndarray, *, num_subsets: int = 100,
                      max_subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased KID (MMD^2, cubic polynomial kernel; may be slightly negative) by clean-fid,
    deterministic for a seed (clean-fid draws its subsets from numpy's global RNG, restored after)."""
    from cleanfid import fid

    if min(len(feats1), len(feats2)) < 2:
        raise ValueError("KID needs at least 2 images per set")
    with _numpy_seed(seed):
        return float(fid.kernel_distance(np.asarray(feats1, np.float64), np.asarray(feats2, np.float64),
                                         num_subsets=num_subsets, max_subset_size=max_subset_size))


# ---------------------------------------------------------------------------- metrics
class _FeatureMetric(Metric):
    higher_is_better = False

    def __init__(self, extractor: FeatureExtractor | None = None, *, inception_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", n_bootstrap: int = 20, seed: int = 0,
                 cache: FeatureCache | None = None, name: str | None = None):
        self.extractor = extractor if extractor is not None else inception_extractor(inception_path, device=device)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.cache = cache if cache is not None else FeatureCache()
        if name:
            self.name = name

    def _feats(self, s: SampleSet | np.ndarray, crop: CropSpec | None = None) -> np.ndarray:
        if isinstance(s, np.ndarray):  # precomputed reference features
            return s
        if len(s) == 0:
            raise ValueError(f"{s.root}: empty sample set")
        return self.cache.features(self.extractor, s.paths, crop)


class FID(_FeatureMetric):
    """FID of samples against a reference (real images or any SampleSet, or precomputed (N, D) features).
    Interval: bootstrap resampling both sets independently."""

    name = "fid"
    needs_reference = True

    def compute(self, samples: SampleSet, reference: SampleSet | np.ndarray | None = None) -> MetricResult:
        if reference is None:
            raise ValueError(f"{self.name} needs a reference set")
        a, b = self._feats(samples), self._feats(reference)
        value = fid_from_features(a, b)

        def rep(rng):
            return fid_from_features(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])

        ci = bootstrap_interval(rep, self.n_bootstrap, self.seed)
        return MetricResult({self.name: value}, {self.name: ci} if ci else {}, num_samples=len(a))


class KID(_FeatureMetric):
    """KID of samples against a reference (clean-fid estimator), deterministic for ``seed``.
    Interval: bootstrap over both sets with ``max(10, num_subsets // 10)`` subsets per replicate."""

    name = "kid"
    needs_reference = True

    def __init__(self, extractor: FeatureExtractor | None = None, *, num_subsets: int = 100,
                 max_subset_size: int = 1000, **kw):
        super().__init__(extractor, **kw)
        self.num_subsets = int(num_subsets)
        self.max_subset_size = int(max_subset_size)

    def compute(self, samples: SampleSet, reference: SampleSet | np.ndarray | None = None) -> MetricResult:
        if reference is None:
            raise ValueError(f"{self.name} needs a reference set")
        a, b = self._feats(samples), self._feats(reference)
        value = kid_from_features(a, b, num_subsets=self.num_subsets, max_subset_size=self.max_subset_size,
                                  seed=self.seed)
        sub = max(10, self.num_subsets // 10)

        def rep(rng):
            return kid_from_features(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))],
                                     num_subsets=sub, max_subset_size=self.max_subset_size,
                                     seed=int(rng.integers(2**31)))

        ci = bootstrap_interval(rep, self.n_bootstrap, self.seed)
        return MetricResult({self.name: value}, {self.name: ci} if ci else {}, num_samples=len(a))


class FIDT(_FeatureMetric):
    """FID-T: FID against the teacher's samples on the same (prompt, seed) pairs.

    ``reference`` is the teacher's SampleSet; unmatched samples are left out (with a warning).
    Interval: paired bootstrap over the matched pairs.
    """

    name = "fid_t"
    needs_reference = True
    crop: CropSpec | None = None

    def compute(self, samples: SampleSet, reference: SampleSet | None = None) -> MetricResult:
        if not isinstance(reference, SampleSet):
            raise ValueError(f"{self.name} needs the teacher's SampleSet as reference")
        mine, theirs = samples.pair_with(reference)
        a = self._feats(samples.subset(mine), self.crop)
        b = self._feats(reference.subset(theirs), self.crop)
        if a.shape[:-1] != b.shape[:-1]:
            raise ValueError(f"{self.name}: student and teacher crops differ ({a.shape} vs {b.shape}); "
                             "are the images the same size?")
        d = a.shape[-1]
        value = fid_from_features(a.reshape(-1, d), b.reshape(-1, d))
        n = len(a)

        def rep(rng):
            idx = rng.integers(0, n, n)
            return fid_from_features(a[idx].reshape(-1, d), b[idx].reshape(-1, d))

        ci = bootstrap_interval(rep, self.n_bootstrap, self.seed)
        return MetricResult({self.name: value}, {self.name: ci} if ci else {}, num_samples=n)


class PatchFIDT(FIDT):
    """Patch FID-T: FID-T over fixed-size crops at full resolution (``crop_size`` px, ``layout``
    "grid" or "center"); the student's and the teacher's images are cropped at the same places."""

    name = "patch_fid_t"

    def __init__(self, extractor: FeatureExtractor | None = None, *, crop_size: int = 299, layout: str = "grid", **kw):
        super().__init__(extractor, **kw)
        self.crop = CropSpec(int(crop_size), layout)
