"""CLIP score with open_clip: cosine similarity of image and prompt embeddings (times ``scale``).

Default: ``ViT-L-14-quickgelu`` with the OpenAI weights from a local ``open_clip_model.safetensors``
(hub repo timm/vit_large_patch14_clip_224.openai; config key ``eval.weights.clip_score`` or
$SENSEFLOW_CLIP_WEIGHTS, or the Hugging Face cache). ``scale=1`` reports raw cosine (the scale of the
SenseFlow tables, ~0.33); ``scale=100`` gives the torchmetrics convention. Any other open_clip model
name + checkpoint works. ``ClipScore(tiny=True)`` is a random-init 2-layer model of the same family.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from . import _openclip
from .metric import PromptImageScore, to_pil_list
from .weights import resolve_weights

__all__ = ["ClipScore"]


class ClipScore(PromptImageScore):
    """Per-image ``scale * max(cos(image, prompt), 0)``; ``compute`` reports the mean +- 1.96 sem.

    ``checkpoint``: local open_clip weights (state dict, .safetensors/.bin/.pt). ``tiny``: random-init
    small model (tests); ``random_init``: the real architecture without weights (throughput checks).
    """

    name = "clip_score"
    higher_is_better = True

    def __init__(self, model_name: str = "ViT-L-14-quickgelu", checkpoint: str | os.PathLike | None = None, *,
                 tiny: bool = False, random_init: bool = False, seed: int = 0, scale: float = 1.0,
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.scale = float(scale)
        arch = _openclip.tiny_model_name(model_name) if tiny else model_name
        if tiny or random_init:
            ckpt = checkpoint
        elif model_name == "ViT-L-14-quickgelu":
            ckpt = resolve_weights("clip_score", checkpoint)
        elif checkpoint is None:
            raise ValueError(f"clip_score: model {model_name!r} needs a local checkpoint (eval.weights.clip_score)")
        else:
            ckpt = checkpoint
        self.model_name = arch
        self.model, self.preprocess, self.tokenizer = _openclip.build(arch, ckpt, device=self.device, seed=seed)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        img, txt = _openclip.encode_pairs(self.model, self.preprocess, self.tokenizer, to_pil_list(images), prompts,
                                          self.device)
        cos = (img * txt).sum(-1).clamp_min(0.0)
        return (self.scale * cos).cpu().numpy().astype(np.float64)
