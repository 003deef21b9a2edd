"""The few-step generator: anchors, backward simulation, and the two samplers.

The student is a `Denoiser` (a copy of the teacher) queried only at its K anchors
sigma_0 = 1 > sigma_1 > ... > sigma_{K-1}; segment k runs from sigma_k to sigma_{k+1}
(sigma_K = 0).
"""

from __future__ import annotations

import math

import torch

from senseflow import flow
from senseflow.models.base import Conditioning, Denoiser

Tensor = torch.Tensor


def pure_noise_scale(sigma: float) -> float:
    """sqrt((1 - s)^2 + s^2) = 1 / c(s): the x_s whose DDPM latent c(s) x_s is unit-variance noise is
    noise * pure_noise_scale(s) (senseflow.models.sdxl). 1 at sigma 1, where x_s is pure noise anyway."""
    return math.sqrt((1 - sigma) ** 2 + sigma ** 2)


class FewStepGenerator:
    """Anchors expressed as indices into the family's sigma table (index 999 = sigma 1).

    pure_noise_start: the input at anchor 0 is `noise * pure_noise_scale(sigma_0)` (SDXL as DMD2 trains and
    samples it: the UNet's first input is unit-variance noise, not c(sigma_0) * noise); otherwise the noise
    itself, which is the same wherever sigma_0 = 1.
    """

    def __init__(self, anchor_indices: list[int], sigma_table: Tensor, pure_noise_start: bool = False):
        self.anchor_indices = list(anchor_indices)
        self.sigma_table = sigma_table.float()
        self.sigmas = [float(self.sigma_table[i]) for i in self.anchor_indices]
        self.pure_noise_start = pure_noise_start

    def start(self, noise: Tensor) -> Tensor:
        """The generator's input at anchor 0 for this noise."""
        return noise * pure_noise_scale(self.sigmas[0]) if self.pure_noise_start else noise

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    def sigma(self, k: int) -> float:
        """sigma of anchor k; k == K gives 0 (the clean end)."""
        return self.sigmas[k] if k < self.num_steps else 0.0

    def index(self, k: int) -> int:
        """Table index of anchor k; k == K gives -1 (below the table: sigma 0)."""
        return self.anchor_indices[k] if k < self.num_steps else -1

    @torch.no_grad()
    def backward_simulate(self, student: Denoiser, cond: Conditioning, k: int, shape: tuple[int, ...],
                          rng: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        """The generator's own input at anchor k, as it would see it at inference (DMD2 backward simulation).

        From pure noise, run the current student over anchors 0..k-1, each time predicting x0 and
        re-noising it with fresh noise to the next anchor. k = 0 returns pure noise.
        """
        x = self.start(torch.randn(shape, generator=rng).to(device))
        for j in range(k):
            s = torch.full((shape[0],), self.sigma(j), device=device)
            x0 = student.x0(x, s, cond)
            fresh = torch.randn(shape, generator=rng).to(device)
            x = flow.renoise_step(x0, self.sigma(j + 1), fresh)
        return x

    @torch.no_grad()
    def sample(self, student: Denoiser, cond: Conditioning, noise: Tensor, sampler: str = "stochastic",
               rng: torch.Generator | None = None) -> Tensor:
        """K-step sampling from `noise` (B, C, H, W); returns the clean estimate (B, C, H, W).

        stochastic: predict x0 at each anchor, re-noise with fresh noise to the next one (as trained
        by backward simulation). euler: deterministic Euler steps with the student's velocity.
        """
        if sampler not in ("stochastic", "euler"):
            raise ValueError(f"sampler must be 'stochastic' or 'euler', got {sampler!r}")
        x = self.start(noise)
        b = x.shape[0]
        for k in range(self.num_steps):
            s = torch.full((b,), self.sigma(k), device=x.device)
            v = student(x, s, cond)
            if sampler == "euler":
                x = flow.euler_step(x, v, self.sigma(k), self.sigma(k + 1))
                continue
            x0 = flow.x0_from_velocity(x, s, v)
            if k + 1 == self.num_steps:
                return x0
            fresh = torch.randn(x.shape, generator=rng).to(x.device)
            x = flow.renoise_step(x0, self.sigma(k + 1), fresh)
        return x


@torch.no_grad()
def teacher_sample(teacher: Denoiser, cond: Conditioning, uncond: Conditioning | None, noise: Tensor,
                   sigmas: list[float], guidance: float) -> Tensor:
    """Guided Euler sampling of the teacher over `sigmas` (decreasing, ending above 0; 0 is appended)."""
    from senseflow.models.base import guided_velocity

    x = noise
    b = x.shape[0]
    grid = list(sigmas) + [0.0]
    for s, s_next in zip(grid[:-1], grid[1:]):
        v = guided_velocity(teacher, x, torch.full((b,), s, device=x.device), cond, uncond, guidance)
        x = flow.euler_step(x, v, s, s_next)
    return x
