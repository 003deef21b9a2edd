"""AutoencoderKL as a `LatentCodec`: pixels in [-1, 1] <-> the latents the denoiser works on.

    latents = (E(x) - shift_factor) * scaling_factor          decode: D(latents / scaling_factor + shift_factor)

with the family's factors from the VAE config (SD3/SD3.5: 1.5305 / 0.0609; FLUX.1: 0.3611 / 0.1159;
SDXL: 0.13025 / none). `encode(pixels)` returns the posterior mean unless sampling is asked for (the codec's
`sample` attribute, or `encode(..., sample=True)`): then it draws from the posterior with the given random-number
generator `rng` (a CPU one works for CUDA pixels), as the authors and DMD2 produce their real latents
(`data.latents`, senseflow.data).

The VAE's parameters are frozen, but `decode` keeps the autograd graph w.r.t. its input: the discriminator's
generator loss back-propagates through the decoder into the generator.
"""

from __future__ import annotations

import torch

from senseflow.models.base import LatentCodec

Tensor = torch.Tensor


class VAECodec(LatentCodec):
    def __init__(self, vae: torch.nn.Module, scaling_factor: float | None = None, shift_factor: float | None = None,
                 sample: bool = False):
        super().__init__()
        self.vae = vae
        self.vae.requires_grad_(False)
        self.vae.eval()
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor if scaling_factor is None else scaling_factor)
        shift = getattr(cfg, "shift_factor", None) if shift_factor is None else shift_factor
        self.shift_factor = float(shift or 0.0)
        self.sample = sample

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along each axis (8 for the real VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def train(self, mode: bool = True) -> "VAECodec":
        """The VAE stays in eval mode (frozen)."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, pixels: Tensor, rng: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        dist = self.vae.encode(pixels.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist
        draw = self.sample if sample is None else sample
        z = dist.sample(rng) if draw else dist.mean
        return ((z - self.shift_factor) * self.scaling_factor).to(pixels.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z, return_dict=False)[0].to(latents.dtype)
