"""The contract between a world (or a model family) and the training loop: `Components`.

A builder (senseflow.components for the families, senseflow.worlds.digits.components for the digits
world) hands the loop one `Components`: the model bundle, a `DataSource`, a discriminator factory, a
renderer, the sample-grid prompts and, for a world that measures in its own feature space, an
`Evaluator` and an `AfterEval` hook. Everything is a typed field; nothing is looked up by name.

The two standard parts every builder uses live here too: `to_uint8` (the renderer's output format) and
`make_discriminator_factory` (the `make_discriminator` field for cfg.gan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np
import torch

from senseflow.config import RunConfig
from senseflow.distill import Batch
from senseflow.models.base import ModelBundle


class DataSource(Protocol):
    def batch(self, iteration: int, batch_size: int, rng: torch.Generator) -> Batch: ...


class Evaluator(Protocol):
    """Measures a trained student with one sampler: (metrics, 95% intervals by name, number of samples)."""

    def __call__(self, distiller, cfg: RunConfig, sampler: str, progress: bool
                 ) -> tuple[Mapping[str, float], Mapping[str, tuple[float, float]], int]: ...


class AfterEval(Protocol):
    """Runs after an evaluation (e.g. writes preview samples under `run_dir`)."""

    def __call__(self, distiller, run_dir: Path) -> None: ...


@dataclass
class Components:
    """What a run needs besides its config, built by senseflow.components for a world or family.

    evaluate: the world's own evaluator (None: the generic one on generated PNGs, senseflow.evaluate).
    after_eval: called after each evaluation that asks for previews (None: nothing).
    """

    bundle: ModelBundle
    data: DataSource
    make_discriminator: Callable | None = None
    render: Callable[[torch.Tensor], np.ndarray] | None = None   # latents -> uint8 (B, H, W, C)
    sample_prompts: list[str] = field(default_factory=list)
    evaluate: Evaluator | None = None
    after_eval: AfterEval | None = None


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_discriminator_factory(cfg: RunConfig, backbone, text_dim: int, image_size: int,
                               latent_size: tuple[int, int], text_encoder=None):
    """A factory fake_score -> discriminator for cfg.gan.kind (None when the GAN is off). text_encoder: D's own
    text encoder for gan.text_condition=clip (None: loaded from gan.text_encoder)."""
    if cfg.gan.kind == "none":
        return None
    from senseflow.discriminators import build_discriminator

    def make(fake_score):
        return build_discriminator(cfg.gan, fake_score, text_dim=text_dim,
                                   backbone=backbone if not isinstance(backbone, str) else None,
                                   image_size=image_size, latent_size=latent_size,
                                   hidden_channels=cfg.gan.hidden_channels, text_encoder=text_encoder)
    return make
