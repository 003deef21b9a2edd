"""Common interface of every evaluation metric, the on-disk sample set, and local-weights resolution.

* `SampleSet`: a folder of PNG files plus ``manifest.jsonl`` (one JSON object per image:
  ``{"file", "prompt", "seed", "model", "steps", "sampler", ...}``). A folder without a manifest
  (e.g. real COCO photos) loads too, with unknown prompts and seeds.
* `Metric`: ``compute(samples, reference=None) -> MetricResult``. A `MetricResult` is a plain
  ``dict[str, float]`` of values that also carries ``intervals`` (95 % intervals, name -> (lo, hi)),
  ``num_samples`` and, for per-image scores, the ``per_sample`` array.
* Intervals: percentile bootstrap over samples for distribution metrics (FID, KID, FID-T, patch
  FID-T); mean +- 1.96 * standard error for per-image scores (`mean_interval`).
* `resolve_weights`: finds a local weights file (explicit path, environment variable, the shared
  weights folder, the library's usual cache, the Hugging Face hub cache) and otherwise raises ONE
  `MissingWeightsError` that names the file, where to get it, the config key and the environment
  variable. Nothing here downloads.
* `higher_is_better(name)`: the metric direction table used by the ablation tables.

This module imports neither torch nor any model library.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from senseflow.run_folder import save_png  # the one PNG writer (re-exported for the sample sets)

__all__ = [
    "MissingWeightsError", "WeightSpec", "WEIGHTS", "resolve_weights", "resolve_hub_dir", "is_offline",
    "weights_dir", "Sample", "SampleSet", "MANIFEST", "IMAGE_EXTENSIONS", "MetricResult", "Metric",
    "mean_interval", "bootstrap_interval", "PromptImageScore", "to_pil_list", "higher_is_better", "METRIC_DIRECTIONS", "evaluate",
    "flatten_results", "build_metrics", "METRIC_NAMES", "read_manifest", "save_png",
]

MANIFEST = "manifest.jsonl"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ============================================================================ weights
class MissingWeightsError(FileNotFoundError):
    """Weights needed by a metric are not on this machine (and nothing will be downloaded).

    Attributes: ``filename`` (what to fetch), ``source`` (where from), ``config_key`` and
    ``env_var`` (the two ways to point at the file once it is here).
    """

    def __init__(self, message: str, *, filename: str, source: str, config_key: str, env_var: str):
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.source = source
        self.config_key = config_key
        self.env_var = env_var

    def __str__(self) -> str:  # OSError would print "[Errno None] ..."
        return self.message

    def __reduce__(self):
        return (_rebuild_missing, (self.message, self.filename, self.source, self.config_key, self.env_var))


def _rebuild_missing(message, filename, source, config_key, env_var):
    return MissingWeightsError(message, filename=filename, source=source, config_key=config_key, env_var=env_var)


@dataclass(frozen=True)
class WeightSpec:
    """Where one weights file (or model folder) comes from and how the user points at it.

    ``filename``: the file to fetch (or, with ``is_dir``, a folder name); ``source``: URL or hub repo
    for the message; ``config_key``: dotted config key holding a path; ``env_var``: environment
    variable holding a path; ``hub_repo``/``hub_filename``: looked up in the local Hugging Face cache
    (never downloaded); ``search_dirs``: the library's own usual cache folders.
    """

    what: str
    filename: str
    source: str
    config_key: str
    env_var: str
    hub_repo: str | None = None
    hub_filename: str | None = None
    search_dirs: tuple[str, ...] = ()
    is_dir: bool = False


WEIGHTS: dict[str, WeightSpec] = {
    "inception": WeightSpec(
        what="Inception-v3 FID network (clean-fid TorchScript)",
        filename="inception-2015-12-05.pt",
        source="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        config_key="eval.weights.inception", env_var="SENSEFLOW_INCEPTION_WEIGHTS",
        search_dirs=("/tmp",)),  # where clean-fid itself caches it
    "clip_score": WeightSpec(
        what="open_clip ViT-L-14 (OpenAI) weights for CLIP score",
        filename="open_clip_model.safetensors",
        source="https://huggingface.co/timm/vit_large_patch14_clip_224.openai (file open_clip_model.safetensors)",
        config_key="eval.weights.clip_score", env_var="SENSEFLOW_CLIP_WEIGHTS",
        hub_repo="timm/vit_large_patch14_clip_224.openai", hub_filename="open_clip_model.safetensors"),
    "hps_v2": WeightSpec(
        what="HPS v2 checkpoint",
        filename="HPS_v2_compressed.pt",
        source="https://huggingface.co/xswu/HPSv2 (file HPS_v2_compressed.pt)",
        config_key="eval.weights.hps", env_var="SENSEFLOW_HPS_WEIGHTS",
        hub_repo="xswu/HPSv2", hub_filename="HPS_v2_compressed.pt", search_dirs=("~/.cache/hpsv2",)),
    "hps_v2.1": WeightSpec(
        what="HPS v2.1 checkpoint",
        filename="HPS_v2.1_compressed.pt",
        source="https://huggingface.co/xswu/HPSv2 (file HPS_v2.1_compressed.pt)",
        config_key="eval.weights.hps", env_var="SENSEFLOW_HPS_WEIGHTS",
        hub_repo="xswu/HPSv2", hub_filename="HPS_v2.1_compressed.pt", search_dirs=("~/.cache/hpsv2",)),
    "image_reward": WeightSpec(
        what="ImageReward v1.0 checkpoint",
        filename="ImageReward.pt",
        source="https://huggingface.co/THUDM/ImageReward (file ImageReward.pt)",
        config_key="eval.weights.image_reward", env_var="SENSEFLOW_IMAGEREWARD_WEIGHTS",
        hub_repo="THUDM/ImageReward", hub_filename="ImageReward.pt", search_dirs=("~/.cache/ImageReward",)),
    "pickscore": WeightSpec(
        what="PickScore v1 model folder (transformers CLIPModel)",
        filename="PickScore_v1", is_dir=True,
        source="https://huggingface.co/yuvalkirstain/PickScore_v1 (whole repository)",
        config_key="eval.weights.pickscore", env_var="SENSEFLOW_PICKSCORE_MODEL",
        hub_repo="yuvalkirstain/PickScore_v1"),
    "pickscore_processor": WeightSpec(
        what="CLIP ViT-H-14 processor folder used by PickScore (tokenizer + image processor)",
        filename="CLIP-ViT-H-14-laion2B-s32B-b79K", is_dir=True,
        source="https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer*, vocab.json, merges.txt, "
               "special_tokens_map.json, preprocessor_config.json)",
        config_key="eval.weights.pickscore_processor", env_var="SENSEFLOW_PICKSCORE_PROCESSOR",
        hub_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
}


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE or SENSEFLOW_OFFLINE is set to a true value."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "SENSEFLOW_OFFLINE"))


def weights_dir() -> Path:
    """The shared folder searched for every weights file: $SENSEFLOW_WEIGHTS_DIR or ~/.cache/senseflow/weights."""
    return Path(os.environ.get("SENSEFLOW_WEIGHTS_DIR", "~/.cache/senseflow/weights")).expanduser()


def _hub_cached_file(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        hit = try_to_load_from_cache(repo_id=repo, filename=filename)
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def resolve_hub_dir(repo: str) -> Path | None:
    """Local snapshot folder of a hub repository if it is in the Hugging Face cache, else None. No network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        return None
    try:
        return Path(snapshot_download(repo_id=repo, local_files_only=True))
    except Exception:
        return None


def _missing(spec: WeightSpec, detail: str) -> MissingWeightsError:
    kind = "folder" if spec.is_dir else "file"
    msg = (f"{spec.what}: {detail}. Fetch the {kind} '{spec.filename}' from {spec.source} and point to it with "
           f"the config key {spec.config_key}=<path> or the environment variable {spec.env_var}=<path> "
           f"(or place it under {weights_dir()}/).")
    return MissingWeightsError(msg, filename=spec.filename, source=spec.source,
                               config_key=spec.config_key, env_var=spec.env_var)


def resolve_weights(spec: WeightSpec | str, path: str | os.PathLike | None = None) -> Path:
    """Local path of a weights file (or model folder); raises `MissingWeightsError` when there is none.

    Search order: ``path`` (from the config; when given it must exist), ``$<env_var>``,
    ``weights_dir()/<filename>``, the library's usual cache folders, the Hugging Face hub cache.
    Never downloads anything.
    """
    if isinstance(spec, str):
        spec = WEIGHTS[spec]
    ok = (lambda p: p.is_dir()) if spec.is_dir else (lambda p: p.is_file())
    if path not in (None, ""):
        p = Path(path).expanduser()
        if ok(p):
            return p
        raise _missing(spec, f"the configured path {p} ({spec.config_key}) does not exist")
    env = os.environ.get(spec.env_var, "").strip()
    if env:
        p = Path(env).expanduser()
        if ok(p):
            return p
        raise _missing(spec, f"${spec.env_var}={env} does not exist")
    for d in (weights_dir(), *(Path(s).expanduser() for s in spec.search_dirs)):
        if ok(d / spec.filename):
            return d / spec.filename
    if spec.hub_repo:
        hit = resolve_hub_dir(spec.hub_repo) if spec.is_dir else _hub_cached_file(spec.hub_repo, spec.hub_filename or spec.filename)
        if hit is not None:
            return hit
    where = "offline and " if is_offline() else ""
    raise _missing(spec, f"{where}not found locally")


# ============================================================================ samples
@dataclass(frozen=True)
class Sample:
    """One image of a `SampleSet`: ``file`` is relative to the set's folder; ``key`` = (prompt, seed)."""

    file: str
    prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    steps: int | None = None
    sampler: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str | None, int | None]:
        return (self.prompt, self.seed)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(dict(self.extra))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Sample":
        known = {"file", "prompt", "seed", "model", "steps", "sampler"}
        seed = d.get("seed")
        steps = d.get("steps")
        return cls(file=str(d["file"]), prompt=d.get("prompt"), seed=None if seed is None else int(seed),
                   model=d.get("model"), steps=None if steps is None else int(steps), sampler=d.get("sampler"),
                   extra={k: v for k, v in d.items() if k not in known})


def read_manifest(path: Path) -> list[Sample]:
    """Parse a manifest.jsonl; a broken line (e.g. half-written) is skipped with a warning; a later
    line for the same file replaces an earlier one (resumed generation)."""
    by_file: dict[str, Sample] = {}
    with open(path, "r", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                s = Sample.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                warnings.warn(f"{path}:{n}: skipping unreadable manifest line ({e})", stacklevel=2)
                continue
            by_file[s.file] = s
    return list(by_file.values())


class SampleSet:
    """A folder of images with their prompts and seeds.

    ``SampleSet.load(root)`` reads ``root/manifest.jsonl`` (entries whose file is missing are dropped
    with a warning) or, without a manifest, every image file under ``root`` (sorted, no prompts).
    Images are returned as uint8 arrays of shape (H, W, 3).
    """

    def __init__(self, root: str | os.PathLike, samples: Sequence[Sample]):
        self.root = Path(root)
        self.samples: list[Sample] = list(samples)

    # -- construction
    @classmethod
    def load(cls, root: str | os.PathLike) -> "SampleSet":
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"sample folder {root} does not exist")
        man = root / MANIFEST
        if man.is_file():
            samples = read_manifest(man)
            present = [s for s in samples if (root / s.file).is_file()]
            if len(present) < len(samples):
                warnings.warn(f"{root}: {len(samples) - len(present)} manifest entries have no image file; "
                              "they are ignored", stacklevel=2)
            return cls(root, present)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        return cls(root, [Sample(file=str(p.relative_to(root))) for p in files])

    @classmethod
    def from_arrays(cls, root: str | os.PathLike, images: np.ndarray | Sequence[np.ndarray],
                    prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *,
                    model: str | None = None, steps: int | None = None, sampler: str | None = None,
                    start_index: int = 0) -> "SampleSet":
        """Write uint8 images (N, H, W, C) (C = 1 or 3) as PNGs plus a manifest and return the set."""
        from .store import append_jsonl  # local import: store has no heavy dependencies

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        n = len(images)
        prompts = list(prompts) if prompts is not None else [None] * n
        seeds = list(seeds) if seeds is not None else [None] * n
        if not (len(prompts) == len(seeds) == n):
            raise ValueError(f"got {n} images, {len(prompts)} prompts and {len(seeds)} seeds")
        out = []
        for i in range(n):
            s = Sample(file=f"{start_index + i:06d}.png", prompt=prompts[i],
                       seed=None if seeds[i] is None else int(seeds[i]), model=model, steps=steps, sampler=sampler)
            save_png(root / s.file, images[i])
            append_jsonl(root / MANIFEST, s.to_json())
            out.append(s)
        return cls(root, out)

    # -- access
    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __repr__(self) -> str:
        return f"SampleSet({str(self.root)!r}, n={len(self)})"

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in set order."""
        return [self.root / s.file for s in self.samples]

    @property
    def prompts(self) -> list[str | None]:
        return [s.prompt for s in self.samples]

    def image(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3)."""
        from PIL import Image

        with Image.open(self.root / self.samples[i].file) as im:
            return np.asarray(im.convert("RGB"))

    def images(self, indices: Iterable[int] | None = None) -> list[np.ndarray]:
        """uint8 (H, W, 3) arrays for ``indices`` (default: all)."""
        idx = range(len(self)) if indices is None else indices
        return [self.image(i) for i in idx]

    def subset(self, indices: Sequence[int]) -> "SampleSet":
        return SampleSet(self.root, [self.samples[i] for i in indices])

    def pair_with(self, other: "SampleSet") -> tuple[list[int], list[int]]:
        """Indices (mine, other's) of samples with the same (prompt, seed), in my order.

        Raises ValueError when either set lacks prompts/seeds, keys repeat, or nothing matches; warns
        when only part of this set has a partner.
        """
        for name, ss in (("samples", self), ("reference", other)):
            if any(s.prompt is None or s.seed is None for s in ss.samples):
                raise ValueError(f"{name} {ss.root}: pairing needs a prompt and a seed for every image (manifest.jsonl)")
        theirs: dict[tuple, int] = {}
        for j, s in enumerate(other.samples):
            if s.key in theirs:
                raise ValueError(f"reference {other.root}: (prompt, seed) {s.key!r} appears twice")
            theirs[s.key] = j
        mine, their_idx, seen = [], [], set()
        for i, s in enumerate(self.samples):
            if s.key in seen:
                raise ValueError(f"samples {self.root}: (prompt, seed) {s.key!r} appears twice")
            seen.add(s.key)
            if s.key in theirs:
                mine.append(i)
                their_idx.append(theirs[s.key])
        if not mine:
            raise ValueError(f"no (prompt, seed) pair of {self.root} is in {other.root}")
        if len(mine) < len(self):
            warnings.warn(f"{len(self) - len(mine)} of {len(self)} samples in {self.root} have no teacher sample "
                          f"in {other.root}; they are left out", stacklevel=2)
        return mine, their_idx


# ============================================================================ results and intervals
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


# Direction of every metric name the harness writes: True = higher is better. Names not listed
# follow the prefix rule in `higher_is_better`.
METRIC_DIRECTIONS: dict[str, bool] = {
    "fid": False, "kid": False, "fid_t": False, "patch_fid_t": False, "kid_t": False,
    "clip_score": True, "hps": True, "pickscore": True, "image_reward": True,
    "prompt_accuracy": True, "diversity": True,
    "loss": False, "time": False,
}
_LOWER_PREFIXES = ("fid", "kid", "patch_fid", "loss", "lpips", "mse")


def higher_is_better(name: str) -> bool:
    """Direction of a metric: explicit `METRIC_DIRECTIONS` entry, else lower for names starting with
    fid/kid/patch_fid/loss/lpips/mse (``loss/...`` and ``fid_t@euler`` style names included), higher otherwise."""
    if name in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[name]
    base = name.split("@")[0].split("/")[-1].lower()
    if base in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[base]
    return not base.startswith(_LOWER_PREFIXES)


# ============================================================================ metric interface
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


def evaluate(metrics: Sequence[Metric], samples: SampleSet, reference: SampleSet | None = None
             ) -> dict[str, MetricResult]:
    """Run each metric; metrics that need a reference are skipped with a warning when there is none."""
    out: dict[str, MetricResult] = {}
    for m in metrics:
        if m.needs_reference and reference is None:
            warnings.warn(f"{m.name}: needs a reference sample set; skipped", stacklevel=2)
            continue
        out[m.name] = m.compute(samples, reference)
    return out


METRIC_NAMES = ("fid", "kid", "fid_t", "patch_fid_t", "clip_score", "hps", "pickscore", "image_reward")
# worlds that measure in their own feature space name their own metrics (evals.digits.evaluate_samples)
WORLD_METRIC_NAMES = {"digits": ("fid_t", "fid", "prompt_accuracy", "diversity")}
# the keys of eval.weights: the last part of each WeightSpec.config_key
WEIGHT_KEYS = tuple(sorted({spec.config_key.rsplit(".", 1)[-1] for spec in WEIGHTS.values()}))


def metric_names(family: str) -> tuple[str, ...]:
    """The eval.metrics names a run of model.family can compute."""
    return WORLD_METRIC_NAMES.get(family, METRIC_NAMES)


def build_metrics(names: Sequence[str], *, weights: Mapping[str, str] | None = None, device: str = "cpu",
                  tiny: bool = False, extractor: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> list[Metric]:
    """Metric objects for config names (`METRIC_NAMES`).

    ``weights``: the ``eval.weights`` mapping (keys inception, clip_score, hps, pickscore,
    pickscore_processor, image_reward -> local paths; missing keys fall back to environment
    variables and caches, see `resolve_weights`). ``tiny``: random-init tiny models (tests, smoke
    runs; FID-type metrics then use `evals.fid.tiny_extractor` unless ``extractor`` is given).
    ``extractor``: a `evals.fid.FeatureExtractor` for all FID-type metrics (e.g. a world's own
    classifier). ``options``: per-metric keyword arguments, e.g. ``{"patch_fid_t": {"crop_size": 512}}``.
    FID-type metrics share one extractor and one feature cache. Unknown names raise ValueError.
    """
    w = dict(weights or {})
    opts = {k: dict(v) for k, v in (options or {}).items()}
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; evals knows {', '.join(METRIC_NAMES)} "
                         "(world-specific metrics come from the world)")
    out: list[Metric] = []
    fid_like = [n for n in names if n in ("fid", "kid", "fid_t", "patch_fid_t")]
    if fid_like:
        from . import fid as F

        ex = extractor
        if ex is None:
            ex = F.tiny_extractor(device=device) if tiny else F.inception_extractor(w.get("inception"), device=device)
        cache = F.FeatureCache()
        classes = {"fid": F.FID, "kid": F.KID, "fid_t": F.FIDT, "patch_fid_t": F.PatchFIDT}
    for n in names:
        o = opts.get(n, {})
        if n in fid_like:
            out.append(classes[n](ex, cache=cache, **o))
        elif n == "clip_score":
            from .clip_score import ClipScore

            out.append(ClipScore(checkpoint=w.get("clip_score"), tiny=tiny, device=device, **o))
        elif n == "hps":
            from .hps import HPSv2

            out.append(HPSv2(checkpoint=w.get("hps"), tiny=tiny, device=device, **o))
        elif n == "pickscore":
            from .pickscore import PickScore

            out.append(PickScore(w.get("pickscore"), w.get("pickscore_processor"), tiny=tiny, device=device, **o))
        elif n == "image_reward":
            from .image_reward import ImageRewardScore

            out.append(ImageRewardScore(checkpoint=w.get("image_reward"), tiny=tiny, device=device, **o))
    return out


def flatten_results(results: Mapping[str, MetricResult]) -> tuple[dict[str, float], dict[str, list[float]], int | None]:
    """(metrics, intervals, num_samples) in the shape `evals.store.record_eval` takes."""
    metrics: dict[str, float] = {}
    intervals: dict[str, list[float]] = {}
    n = None
    for r in results.values():
        metrics.update(r)
        intervals.update({k: [lo, hi] for k, (lo, hi) in r.intervals.items()})
        if r.num_samples is not None:
            n = r.num_samples if n is None else max(n, r.num_samples)
    return metrics, intervals, n
