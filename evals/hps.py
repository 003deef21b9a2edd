"""HPS v2 / v2.1 (Human Preference Score) on open_clip's ViT-H-14, without the hpsv2 package.

HPS is open_clip ViT-H-14 fine-tuned on human preferences; its score is the cosine similarity of the
normalised image and prompt embeddings (no logit scale), ~0.25-0.32 for good images. The weights
are a local ``{'state_dict': ...}`` file, read with ``torch.load(weights_only=True)``:
``HPS_v2.1_compressed.pt`` (default, ``version="v2.1"``) or ``HPS_v2_compressed.pt`` (``"v2"``), both
from the hub repo xswu/HPSv2; point at it with the config key ``eval.weights.hps`` or
$SENSEFLOW_HPS_WEIGHTS (also searched: $SENSEFLOW_WEIGHTS_DIR, ~/.cache/hpsv2, the HF cache).
Preprocessing follows the hpsv2 package's eval transform: RGB -> tensor in [0, 1] -> bicubic resize
of the short side to 224 on the tensor (antialiased, torchvision's current default) -> center crop ->
OpenAI mean/std. The reference implementation runs under CUDA fp16 autocast; we compute in fp32
unless ``autocast=True``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from . import _openclip
from .metric import PromptImageScore, to_pil_list
from .weights import resolve_weights

__all__ = ["HPSv2", "hps_preprocess"]

_VERSIONS = {"v2": "hps_v2", "v2.0": "hps_v2", "v2.1": "hps_v2.1"}


def hps_preprocess(image_size: int | tuple[int, int]):
    """PIL image -> normalised float tensor (3, S, S), in the hpsv2 eval order (tensor first, then resize)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision import transforms as T

    size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    return T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(),
                      T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(size),
                      T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])


class HPSv2(PromptImageScore):
    """Per-image HPS; ``compute`` reports the mean +- 1.96 sem under the name ``hps``.

    ``tiny``: a random-init 2-layer model with ViT-H-14's family options (tests); a ``checkpoint``
    may still be given to test the loading path. ``random_init``: the real ViT-H-14 without weights.
    """

    name = "hps"
    higher_is_better = True

    def __init__(self, version: str = "v2.1", checkpoint: str | os.PathLike | None = None, *, tiny: bool = False,
                 random_init: bool = False, seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 16,
                 autocast: bool = False):
        if version not in _VERSIONS:
            raise ValueError(f"HPS version={version!r}: use one of {sorted(_VERSIONS)}")
        self.version = version
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.autocast = bool(autocast)
        arch = _openclip.tiny_model_name("ViT-H-14") if tiny else "ViT-H-14"
        ckpt = checkpoint if (tiny or random_init) else resolve_weights(_VERSIONS[version], checkpoint)
        self.model, _, self.tokenizer = _openclip.build(arch, ckpt, device=self.device, seed=seed, hps_format=True)
        self.preprocess = hps_preprocess(self.model.visual.image_size)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        on_cuda = self.device.type == "cuda" and self.autocast
        with torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda):
            img, txt = _openclip.encode_pairs(self.model, self.preprocess, self.tokenizer, to_pil_list(images),
                                              prompts, self.device)
        return (img * txt).sum(-1).cpu().numpy().astype(np.float64)
