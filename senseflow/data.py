"""Real (image, caption) data for distillation, as `Batch`es drawn with a per-iteration random-number generator.

Every source answers `batch(iteration, batch_size, rng)`; the indices come from `rng`,
so a resumed run sees exactly the data an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from senseflow.distill import Batch
from senseflow.errors import UserError
from senseflow.models.base import LatentCodec, TextEncoder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB image -> (3, R, R) in [-1, 1]: shorter side resized to R, centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def read_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs from a folder (image + same-named .txt) or a .jsonl of {"image", "caption"}."""
    p = Path(path)
    if not str(path):
        raise UserError("data.path is empty: set data.path to a folder of images with .txt captions or a .jsonl file")
    if not p.exists():
        raise UserError(f"data.path='{p}' does not exist; point it at a folder of images with .txt captions or a .jsonl")
    pairs: list[tuple[Path, str]] = []
    if p.is_file():
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                img, cap = Path(rec["image"]), str(rec["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{p}:{n} must be a JSON object with 'image' and 'caption' keys") from None
            pairs.append((img if img.is_absolute() else p.parent / img, cap))
    else:
        for img in sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            if txt.is_file():
                pairs.append((img, txt.read_text().strip()))
    if not pairs:
        raise UserError(f"data.path='{p}' holds no (image, caption) pairs (images need a same-named .txt file)")
    return pairs


class ImageTextData:
    """Random (image, caption) batches from `read_pairs`, encoded by the family's VAE and text encoder."""

    def __init__(self, path: str | Path, resolution: int, codec: LatentCodec, text_encoder: TextEncoder,
                 sample_posterior: bool = True):
        self.pairs = read_pairs(path)
        self.resolution = resolution
        self.codec = codec
        self.text_encoder = text_encoder
        self.sample_posterior = sample_posterior  # real latents drawn from the VAE posterior (the authors, DMD2)

    def __len__(self) -> int:
        return len(self.pairs)

    @torch.no_grad()
    def batch(self, iteration: int, batch_size: int, rng: torch.Generator) -> Batch:
        idx = torch.randint(len(self.pairs), (batch_size,), generator=rng).tolist()
        pixels = torch.stack([load_image(self.pairs[i][0], self.resolution) for i in idx])
        prompts = [self.pairs[i][1] for i in idx]
        # the posterior draw comes last from the batch's rng: indices and images are as without it
        latents = self.codec.encode(pixels, rng=rng, sample=self.sample_posterior)
        return Batch(latents, pixels, self.text_encoder.encode(prompts), prompts)


class SyntheticData:
    """Smooth random images with captions, for smoke runs of the real families on tiny models."""

    PROMPTS = ["a red square", "a blue circle", "a green field", "a dark night sky", "a bright sunny beach",
               "a portrait of a cat", "a bowl of fruit", "a city street"]

    def __init__(self, resolution: int, codec: LatentCodec, text_encoder: TextEncoder, channels: int = 3,
                 sample_posterior: bool = True):
        self.resolution, self.codec, self.text_encoder, self.channels = resolution, codec, text_encoder, channels
        self.sample_posterior = sample_posterior

    @torch.no_grad()
    def batch(self, iteration: int, batch_size: int, rng: torch.Generator) -> Batch:
        low = torch.rand(batch_size, self.channels, 4, 4, generator=rng) * 2 - 1
        pixels = torch.nn.functional.interpolate(low, size=self.resolution, mode="bilinear", align_corners=False)
        idx = torch.randint(len(self.PROMPTS), (batch_size,), generator=rng).tolist()
        prompts = [self.PROMPTS[i] for i in idx]
        latents = self.codec.encode(pixels, rng=rng, sample=self.sample_posterior)
        return Batch(latents, pixels, self.text_encoder.encode(prompts), prompts)
