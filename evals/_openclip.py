"""open_clip helpers shared by CLIP score and HPS: building real or tiny models, loading local
checkpoints, encoding (image, prompt) pairs."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

_TINY_DIR: Path | None = None


def tiny_model_name(base: str) -> str:
    """Register (once per process) and return the name of a shrunken copy of open_clip config ``base``:
    same family and options (activation, pooling, tokenizer, 77-token context, 49408 vocab), 32 px
    images, 2-layer towers of width 64 (vision) and 32 (text), embed_dim 32."""
    import open_clip

    global _TINY_DIR
    name = f"senseflow-tiny-{base}"
    if name in open_clip.list_models():
        return name
    cfg = open_clip.get_model_config(base)
    if cfg is None:
        raise ValueError(f"open_clip has no model config {base!r}")
    cfg = copy.deepcopy(cfg)
    cfg["embed_dim"] = 32
    v = cfg["vision_cfg"]
    v.update(image_size=32, layers=2, width=64, patch_size=8, head_width=16)
    v.pop("mlp_ratio", None)
    t = cfg["text_cfg"]
    t.update(width=32, heads=2, layers=2)
    if _TINY_DIR is None:
        _TINY_DIR = Path(tempfile.mkdtemp(prefix="senseflow-openclip-"))
    path = _TINY_DIR / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


class _DropNoPretrained(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root_logger():
    """Hide open_clip's 'No pretrained weights loaded' warning (we load weights ourselves right after)."""
    f = _DropNoPretrained()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def build(model_name: str, checkpoint: str | os.PathLike | None, *, device: str | torch.device = "cpu",
          seed: int = 0, hps_format: bool = False) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer) of ``model_name``; random init from ``seed`` when ``checkpoint`` is None.

    Checkpoints are read with ``torch.load(weights_only=True)`` (or safetensors). ``hps_format``: the
    file is HPS's ``{'state_dict': ...}`` (keys may carry a 'module.' prefix), loaded strictly.
    """
    import open_clip

    with torch.random.fork_rng(devices=[]), _quiet_root_logger():
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
    if checkpoint is not None:
        if hps_format:
            ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
            sd = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
            if not isinstance(sd, dict):
                raise ValueError(f"{checkpoint}: expected {{'state_dict': ...}}, got {type(ckpt).__name__}")
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{checkpoint} does not fit open_clip {model_name}: {str(e)[:600]}") from None
        else:
            open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


@torch.no_grad()
def encode_pairs(model, preprocess, tokenizer, images: Sequence[Any], prompts: Sequence[str],
                 device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (B, E) image and text embeddings of PIL images and prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    pixels = torch.stack([preprocess(im) for im in images]).to(device)
    tokens = tokenizer(list(prompts)).to(device)
    img = model.encode_image(pixels, normalize=True).float()
    txt = model.encode_text(tokens, normalize=True).float()
    return img, txt
