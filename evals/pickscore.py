"""PickScore v1 with transformers: ``logit_scale.exp() * cos(image, prompt)`` of a CLIP-H model
fine-tuned on Pick-a-Pic (~20-23 for good images).

Weights: the model folder of ``yuvalkirstain/PickScore_v1`` (config key ``eval.weights.pickscore`` or
$SENSEFLOW_PICKSCORE_MODEL) and the processor folder of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
(``eval.weights.pickscore_processor`` or $SENSEFLOW_PICKSCORE_PROCESSOR); both are also found in
the Hugging Face cache. Everything loads with ``local_files_only=True`` (transformers 5 silently
returns an almost empty tokenizer for an uncached hub id, so hub ids are never passed to a tokenizer).

``PickScore(tiny=True)`` is a random-init 2-layer CLIPModel with the real CLIP BPE tokenizer (rebuilt
offline from the vocabulary file open_clip ships); ``random_init=True`` builds the real CLIP-H
architecture without weights.
"""

from __future__ import annotations

import gzip
import os
from typing import Any, Sequence

import numpy as np
import torch

from .metric import PromptImageScore, to_pil_list
from .weights import resolve_weights

__all__ = ["PickScore", "clip_bpe_tokenizer", "clip_processor"]

_TOKENIZER = None


def clip_bpe_tokenizer():
    """transformers CLIPTokenizer with the real 49408-token CLIP BPE, built offline from open_clip's
    ``bpe_simple_vocab_16e6.txt.gz`` (ids equal open_clip's up to the padding id)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import bytes_to_unicode, default_bpe
        from transformers import CLIPTokenizer

        byte_chars = list(bytes_to_unicode().values())
        with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
            rows = fh.read().split("\n")
        n_merges = 49408 - 2 * len(byte_chars) - 2  # vocab = bytes, bytes</w>, merges, 2 specials
        merges = [tuple(r.split()) for r in rows[1:1 + n_merges]]
        tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] \
            + ["<|startoftext|>", "<|endoftext|>"]
        tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
        tok.model_max_length = 77
        _TOKENIZER = tok
    return _TOKENIZER


def clip_processor(image_size: int):
    """CLIPProcessor (BPE tokenizer + bicubic short-side resize, center crop, OpenAI mean/std) for ``image_size``."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return CLIPProcessor(image_processor=ip, tokenizer=clip_bpe_tokenizer())


def _config(tiny: bool):
    from transformers import CLIPConfig

    if tiny:
        text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
                    pad_token_id=1)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, hidden_act="gelu")
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    # CLIP ViT-H/14 (laion2B), the architecture of PickScore_v1
    text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)


class PickScore(PromptImageScore):
    """Per-image PickScore; ``compute`` reports the mean +- 1.96 sem under the name ``pickscore``."""

    name = "pickscore"
    higher_is_better = True

    def __init__(self, model_path: str | os.PathLike | None = None, processor_path: str | os.PathLike | None = None,
                 *, tiny: bool = False, random_init: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 batch_size: int = 16):
        from transformers import AutoProcessor, CLIPModel

        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if tiny or random_init:
            cfg = _config(tiny)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = CLIPModel(cfg)
            self.processor = clip_processor(cfg.vision_config.image_size)
        else:
            mdir = resolve_weights("pickscore", model_path)
            pdir = resolve_weights("pickscore_processor", processor_path)
            model = CLIPModel.from_pretrained(str(mdir), local_files_only=True)
            self.processor = AutoProcessor.from_pretrained(str(pdir), local_files_only=True)
            if len(self.processor.tokenizer) < 1000:
                raise ValueError(f"{pdir}: the tokenizer has only {len(self.processor.tokenizer)} tokens; the folder "
                                 "lacks vocab.json/merges.txt or tokenizer.json")
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        pix = self.processor(images=to_pil_list(images), return_tensors="pt")["pixel_values"].to(self.device)
        txt = self.processor(text=list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = self.model(input_ids=txt["input_ids"].to(self.device),
                         attention_mask=txt["attention_mask"].to(self.device), pixel_values=pix)
        cos = (out.image_embeds.float() * out.text_embeds.float()).sum(-1)  # both L2-normalised by CLIPModel
        return (self.model.logit_scale.exp().float() * cos).cpu().numpy().astype(np.float64)
