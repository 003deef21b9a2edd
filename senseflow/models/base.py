"""The one interface every backbone answers, whatever its family.

A `Denoiser` returns the rectified-flow velocity v = noise - x0 for x_s at sigma in [0, 1]
(see senseflow.flow). A `TextEncoder` turns prompts into a `Conditioning`. A `LatentCodec` maps
pixels in [-1, 1] to the latents the denoiser works on (identity for pixel-space worlds).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from senseflow import flow

Tensor = torch.Tensor


@dataclass
class Conditioning:
    """Text conditioning for a batch of B prompts.

    prompt_embeds: (B, L, D) token states as the backbone expects them.
    pooled: (B, P) pooled text vector (SD3/FLUX/SDXL all have one), or None.
    extra: family-specific tensors with a leading batch dimension (e.g. SDXL `time_ids`).
    """

    prompt_embeds: Tensor
    pooled: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def _map(self, fn) -> "Conditioning":
        return Conditioning(fn(self.prompt_embeds), None if self.pooled is None else fn(self.pooled),
                            {k: fn(v) for k, v in self.extra.items()})

    def to(self, *args, **kwargs) -> "Conditioning":
        return self._map(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, idx) -> "Conditioning":
        return self._map(lambda t: t[idx])

    def repeat(self, n: int) -> "Conditioning":
        """Tile a conditioning of batch 1 (or b) to batch n*b."""
        return self._map(lambda t: t.repeat(n, *([1] * (t.ndim - 1))))

    def expand_to(self, batch: int) -> "Conditioning":
        """Broadcast a batch-1 conditioning (e.g. the empty prompt) to `batch`."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a conditioning of batch {len(self)} to {batch}")
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    @staticmethod
    def cat(conds: list["Conditioning"]) -> "Conditioning":
        first = conds[0]
        return Conditioning(
            torch.cat([c.prompt_embeds for c in conds]),
            None if first.pooled is None else torch.cat([c.pooled for c in conds]),
            {k: torch.cat([c.extra[k] for c in conds]) for k in first.extra},
        )

    def detach(self) -> "Conditioning":
        return self._map(lambda t: t.detach())

    def replace(self, **kw) -> "Conditioning":
        return replace(self, **kw)


class Denoiser(nn.Module):
    """A backbone answering velocity(x_s, sigma, cond) in the common convention.

    Subclasses wrap one diffusers model (`self.backbone`) and convert sigma and the output.
    `has_guidance_input` is True for guidance-distilled teachers (FLUX.1-dev): their guidance is an
    embedded scalar input, and they have no true CFG.
    """

    family: str = "base"
    has_guidance_input: bool = False

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) latents; sigma: (B,) in [0, 1]; guidance: (B,) for embedded-guidance models.

        Returns the velocity (B, C, H, W), in x's dtype.
        """
        raise NotImplementedError

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        return self(x, sigma, cond, guidance)

    def x0(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        return flow.x0_from_velocity(x, sigma, self(x, sigma, cond, guidance))

    def student_copy(self) -> "Denoiser":
        """A trainable copy for the generator or fake score: same weights, no guidance input."""
        import copy

        clone = copy.deepcopy(self)
        clone.requires_grad_(True)
        return clone

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.backbone, "enable_gradient_checkpointing"):
            self.backbone.enable_gradient_checkpointing()


def guided_velocity(model: Denoiser, x: Tensor, sigma: Tensor, cond: Conditioning, uncond: Conditioning | None,
                    scale: Tensor | float) -> Tensor:
    """The teacher's guided velocity under the project's one convention.

    Embedded-guidance models (FLUX.1-dev) take `scale` as their guidance input in one forward.
    Others use CFG, v_u + w (v_c - v_u), in one batched forward of 2B; `uncond` is the empty-prompt
    conditioning (batch 1 or B). scale may be a float or a (B,) tensor.
    """
    b = x.shape[0]
    w = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if w.ndim == 0:
        w = w.expand(b)
    if model.has_guidance_input:
        return model(x, sigma, cond, guidance=w)
    if uncond is None:
        raise ValueError("CFG needs the unconditional (empty prompt) conditioning")
    both = Conditioning.cat([uncond.expand_to(b), cond])
    v = model(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
    v_u, v_c = v.chunk(2)
    return flow.cfg_combine(v_u, v_c, w.to(v.dtype))


class TextEncoder(nn.Module):
    """Prompts -> Conditioning. Frozen. `encode([""])` is the unconditional branch."""

    def encode(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def forward(self, prompts: list[str]) -> Conditioning:
        return self.encode(prompts)


class LatentCodec(nn.Module):
    """Pixels in [-1, 1], (B, 3 or 1, H, W) <-> latents the denoiser works on. `encode` takes pixels on any
    device and returns the latents on the codec's own; it may draw from a posterior (`sample=True`, with
    `rng`); deterministic codecs ignore both."""

    def encode(self, pixels: Tensor, rng: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError


class IdentityCodec(LatentCodec):
    """Pixel-space worlds: latents are the pixels."""

    def encode(self, pixels: Tensor, rng: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        return pixels

    def decode(self, latents: Tensor) -> Tensor:
        return latents


@dataclass
class ModelBundle:
    """Everything a run needs from one model family, built together so the shapes agree.

    sigma_table: the family's 1000-entry training-time table (index 0 least noisy, index 999 = 1.0 for the
    flow families; SDXL's DDPM chain ends at ~0.936) in which anchors, DMD index ranges and ISG margins are
    expressed (flow.sigma_table for SD3/FLUX, the DDPM alphas_cumprod converted to sigma for SDXL).
    latent_shape: (C, H, W) of the latents at the configured resolution.
    """

    family: str
    teacher: Denoiser
    text_encoder: TextEncoder
    codec: LatentCodec
    latent_shape: tuple[int, int, int]
    sigma_table: Tensor
    image_channels: int = 3
