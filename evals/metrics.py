"""The metric registry: the names `eval.metrics` and `eval.weights` may use (declared in the core,
senseflow.metric_names, and re-exported here), each metric's direction, and
`build_metrics`, which builds the metric objects of the metric modules (evals.fid, evals.clip_score,
evals.hps, evals.pickscore, evals.image_reward) from config names; `evaluate` runs them on a sample set.

The metric modules build on evals.metric (the interface), evals.sample_set and evals.weights, never on this
module. `higher_is_better(name)`: the metric direction table used by the ablation tables.
This module imports neither torch nor any model library (the metric modules load on `build_metrics`).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

# the names a config may give (senseflow.config checks them when it is built), re-exported here
from senseflow.metric_names import METRIC_NAMES, WEIGHT_KEYS, WORLD_METRIC_NAMES, metric_names

from .metric import Metric, MetricResult
from .sample_set import SampleSet

__all__ = ["higher_is_better", "METRIC_DIRECTIONS", "METRIC_NAMES", "WORLD_METRIC_NAMES", "WEIGHT_KEYS",
           "metric_names", "build_metrics", "evaluate", "flatten_results"]


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


def build_metrics(names: Sequence[str], *, weights: Mapping[str, str] | None = None, device: str = "cpu",
                  tiny: bool = False, extractor: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> list[Metric]:
    """Metric objects for config names (`METRIC_NAMES`).

    ``weights``: the ``eval.weights`` mapping (keys inception, clip_score, hps, pickscore,
    pickscore_processor, image_reward -> local paths; missing keys fall back to environment
    variables and caches, see `evals.weights.resolve_weights`). ``tiny``: random-init tiny models (tests, smoke
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

