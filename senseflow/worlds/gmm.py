"""An analytic world: class-conditional Gaussian mixtures whose flow velocity is known in closed form.

Data x0 in R^d (stored as (B, d, 1, 1) so every 2-D code path applies); class k has a mixture of
isotropic Gaussians N(mu_kj, tau^2 I) with equal weights. Under x_s = (1 - s) x0 + s eps, with a = 1 - s
and var = a^2 tau^2 + s^2:
    p(x_s | component j) = N(a mu_j, var I)
    E[x0 | x_s, j] = mu_j + a tau^2 / var (x_s - a mu_j)
and x0_hat is their posterior-weighted mean, v = (x_s - x0_hat) / s. tau = 0 gives point masses,
whose flow paths are straight (the teacher's Euler step is then exact).
The empty prompt is the unconditional model: the mixture over all classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from senseflow.models.base import Conditioning, Denoiser, TextEncoder

Tensor = torch.Tensor


class GMMTextEncoder(TextEncoder):
    """'class k' -> one-hot of k; '' -> zeros (unconditional)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def encode(self, prompts: list[str]) -> Conditioning:
        onehot = torch.zeros(len(prompts), self.num_classes)
        for i, p in enumerate(prompts):
            if p:
                onehot[i, int(p.split()[-1])] = 1.0
        return Conditioning(onehot[:, None, :], onehot)


class GMMTeacher(Denoiser):
    """The exact velocity of a class-conditional isotropic Gaussian mixture."""

    family = "gmm"

    def __init__(self, means: Tensor, tau: float):
        """means: (K, J, d) component means for K classes with J components each."""
        super().__init__(nn.Identity())
        self.register_buffer("means", means.float())
        self.tau = float(tau)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def _components(self, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """Per-sample component means (B, M, d) and log-weights (B, M)."""
        k, j, d = self.means.shape
        onehot = cond.pooled.float()
        allm = self.means.reshape(1, k * j, d).expand(onehot.shape[0], -1, -1)
        # conditional: only the prompted class's components; unconditional (zeros): all of them
        w = onehot.repeat_interleave(j, dim=1)
        uncond = onehot.sum(1, keepdim=True) == 0
        w = torch.where(uncond, torch.ones_like(w), w)
        logw = torch.log(w.clamp_min(1e-30)) - torch.log(w.sum(1, keepdim=True))
        return allm, logw

    def _posterior_terms(self, x: Tensor, sigma: Tensor, cond: Conditioning):
        """(a, var, means, diff, logp): per-component log p(x_s, j) up to the shared -d/2 log(2 pi)."""
        b = x.shape[0]
        xf = x.reshape(b, -1).double()
        s = sigma.double().view(b, 1)
        a = 1 - s
        means, logw = self._components(cond)
        means, logw = means.double(), logw.double()
        var = a ** 2 * self.tau ** 2 + s ** 2                                  # (B, 1)
        diff = xf[:, None, :] - a[:, :, None] * means                        # (B, M, d)
        logp = logw - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        return a, var, means, diff, logp

    def x0_hat(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        a, var, means, diff, logp = self._posterior_terms(x, sigma, cond)
        r = torch.softmax(logp, dim=1)                                       # (B, M)
        post = means + (a * self.tau ** 2 / var)[:, :, None] * diff          # (B, M, d)
        return (r[:, :, None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        s = sigma.clamp_min(1e-4).view(-1, *([1] * (x.ndim - 1)))
        return (x - self.x0_hat(x, sigma, cond)) / s

    def log_density(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """log p_s(x) per sample (B,), for score checks by autograd."""
        *_, logp = self._posterior_terms(x, sigma, cond)
        return torch.logsumexp(logp, dim=1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, labels: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Exact samples x0 (B, d, 1, 1) of the given classes."""
        k, j, d = self.means.shape
        comp = torch.randint(j, labels.shape, generator=rng)
        mu = self.means[labels, comp]
        return (mu + self.tau * torch.randn(mu.shape, generator=rng)).view(-1, d, 1, 1)

    def student_copy(self) -> Denoiser:
        raise TypeError("the analytic teacher has no weights to copy; use MLPDenoiser.fit_to(teacher) as the student")


class MLPDenoiser(Denoiser):
    """A small velocity network v(x, sigma, class) for the analytic world's students."""

    family = "gmm"

    def __init__(self, dim: int, num_classes: int, hidden: int = 128):
        net = nn.Sequential(nn.Linear(dim + num_classes + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        super().__init__(net)
        self.register_buffer("freqs", torch.arange(1, 9).float() * math.pi)

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        emb = torch.cat([torch.sin(sigma[:, None] * self.freqs), torch.cos(sigma[:, None] * self.freqs)], dim=1)
        h = torch.cat([x.reshape(b, -1), cond.pooled.to(x.dtype), emb.to(x.dtype)], dim=1)
        return self.backbone(h).reshape(x.shape)

    def fit_to(self, teacher: Denoiser, text: GMMTextEncoder, steps: int = 300, batch: int = 256, lr: float = 3e-3,
               seed: int = 0) -> "MLPDenoiser":
        """Regress this network onto the teacher's velocity (uniform sigma, noised exact samples)."""
        rng = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        k = text.num_classes
        for _ in range(steps):
            labels = torch.randint(k, (batch,), generator=rng)
            prompts = [f"class {int(c)}" if float(u) > 0.1 else "" for c, u in zip(labels, torch.rand(batch, generator=rng))]
            cond = text.encode(prompts)
            x0 = teacher.sample(labels, rng)
            s = torch.rand(batch, generator=rng).clamp(0.02, 1.0)
            x = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=rng)
            with torch.no_grad():
                target = teacher(x, s, cond)
            loss = ((self(x, s, cond) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets (N, d)."""
    rng = torch.Generator().manual_seed(seed)
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    dirs = torch.randn(a.shape[1], projections, generator=rng, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())
