"""Local-weights resolution for the metrics: where each weights file comes from and how the user points at it.

`resolve_weights` finds a local weights file (explicit path, environment variable, the shared weights
folder, the library's usual cache, the Hugging Face hub cache) and otherwise raises ONE
`MissingWeightsError` that names the file, where to get it, the config key and the environment variable.
Nothing here downloads. This module imports neither torch nor any model library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from senseflow.metric_names import WEIGHT_KEYS  # the keys of eval.weights; every WeightSpec.config_key ends in one

__all__ = ["MissingWeightsError", "WeightSpec", "WEIGHTS", "WEIGHT_KEYS", "resolve_weights", "resolve_hub_dir",
           "is_offline", "weights_dir"]


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
