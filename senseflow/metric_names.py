"""The names a config's eval section may use: metrics (`eval.metrics`) and the metric models' local
weight files (`eval.weights`).

They live in the core, beside the config that checks them when it is built, so a misspelt name fails as
one line naming the key; evals/ implements the metrics (`evals.metrics.build_metrics`) and resolves the
weight files (`evals.weights.WEIGHTS`, whose config keys are exactly `WEIGHT_KEYS`: tests/test_layers.py
checks it). Nothing here imports torch.
"""

from __future__ import annotations

METRIC_NAMES = ("fid", "kid", "fid_t", "patch_fid_t", "clip_score", "hps", "pickscore", "image_reward")
# worlds that measure in their own feature space name their own metrics (evals.digits.evaluate_samples)
WORLD_METRIC_NAMES = {"digits": ("fid_t", "fid", "prompt_accuracy", "diversity")}

# the keys of eval.weights: one per metric model file (evals.weights.WEIGHTS's config keys), sorted
WEIGHT_KEYS = ("clip_score", "hps", "image_reward", "inception", "pickscore", "pickscore_processor")


def metric_names(family: str) -> tuple[str, ...]:
    """The eval.metrics names a run of model.family can compute."""
    return WORLD_METRIC_NAMES.get(family, METRIC_NAMES)
