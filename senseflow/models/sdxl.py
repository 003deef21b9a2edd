"""SDXL (diffusers UNet2DConditionModel, epsilon-prediction DDPM) as a `Denoiser`.

DDPM writes a noisy latent as x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (ab = alphas_cumprod). Dividing by
c_t = sqrt(ab_t) + sqrt(1 - ab_t) gives exactly our rectified-flow point

    x_s = x_t / c_t = (1 - s) x0 + s eps,   s = sqrt(1 - ab_t) / (sqrt(ab_t) + sqrt(1 - ab_t)),

and conversely c = 1 / sqrt((1 - s)^2 + s^2), sqrt(ab) = (1 - s) c, sqrt(1 - ab) = s c. So the adapter

* maps sigma to a (continuous) DDPM timestep t by linear interpolation in the 1000-entry table s(t),
* feeds the UNet x_t = c(s) x_s and t (the DDPM latent is the larger one: c >= 1),
* turns the predicted eps into the velocity: x0 = (x_s - s eps) / (1 - s) and v = eps - x0 = (eps - x_s) / (1 - s).

The DDPM chain never reaches sigma = 1: with SDXL's betas s(999) ~ 0.936 (sigma_table[-1]). Sigmas above
the table's end are clamped to t = 999 for the UNet's timestep input (the conversion still uses the true
sigma); v divides by (1 - s), so keep sigma < 1.
"""

from __future__ import annotations

import torch

from senseflow.models.base import Conditioning, Denoiser

Tensor = torch.Tensor

# SDXL base / refiner training schedule (scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0).
SDXL_BETA_START = 0.00085
SDXL_BETA_END = 0.012
SDXL_BETA_SCHEDULE = "scaled_linear"


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = SDXL_BETA_START,
                        beta_end: float = SDXL_BETA_END, beta_schedule: str = SDXL_BETA_SCHEDULE) -> Tensor:
    """alphas_cumprod of a DDPM schedule, computed in float32 as diffusers' schedulers do.

    "scaled_linear" (SD/SDXL): betas are the squares of a linear ramp between sqrt(beta_start) and
    sqrt(beta_end); "linear": a linear ramp of the betas themselves.
    """
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """s = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)), elementwise."""
    ab = alphas_cumprod.double()
    a, b = ab.sqrt(), (1 - ab).sqrt()
    return (b / (a + b)).to(alphas_cumprod.dtype)


def sdxl_sigma_table(num_train_timesteps: int = 1000, beta_start: float = SDXL_BETA_START,
                     beta_end: float = SDXL_BETA_END, beta_schedule: str = SDXL_BETA_SCHEDULE) -> Tensor:
    """The 1000-entry table index t -> sigma of SDXL's DDPM schedule (index 0 least noisy).

    Anchors t = [999, 749, 499, 249] are `table[[999, 749, 499, 249]]`.
    """
    return sigma_from_alphas_cumprod(ddpm_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule))


def latent_scale(sigma: Tensor | float) -> Tensor:
    """c(s) = sqrt(ab) + sqrt(1 - ab) = 1 / sqrt((1 - s)^2 + s^2): the DDPM latent is x_t = c * x_s."""
    s = torch.as_tensor(sigma, dtype=torch.float32)
    return ((1 - s) ** 2 + s ** 2).rsqrt()


def alpha_bar_from_sigma(sigma: Tensor | float) -> Tensor:
    """ab = ((1 - s) c(s))^2, the inverse of `sigma_from_alphas_cumprod`."""
    s = torch.as_tensor(sigma, dtype=torch.float32)
    return ((1 - s) * latent_scale(s)) ** 2


def sigma_to_t(sigma: Tensor, table: Tensor) -> Tensor:
    """Continuous DDPM timestep of sigma by linear interpolation in the increasing `table` (t -> sigma).

    Exact (an integer) where sigma equals a table entry; clamped to [0, len(table) - 1] outside the table.
    """
    table = table.to(device=sigma.device, dtype=torch.float32)
    s = sigma.to(torch.float32)
    hi = torch.searchsorted(table, s.contiguous()).clamp(1, len(table) - 1)
    lo = hi - 1
    frac = (s - table[lo]) / (table[hi] - table[lo])
    t = lo.to(torch.float32) + frac
    return t.clamp(0, len(table) - 1)


def t_to_sigma(t: Tensor | float, table: Tensor) -> Tensor:
    """sigma at a (possibly fractional) DDPM timestep, by linear interpolation in `table`."""
    t = torch.as_tensor(t, dtype=torch.float32, device=table.device).clamp(0, len(table) - 1)
    lo = t.floor().long().clamp(max=len(table) - 2)
    frac = t - lo.to(torch.float32)
    table = table.to(torch.float32)
    return table[lo] + frac * (table[lo + 1] - table[lo])


class SDXLDenoiser(Denoiser):
    """SDXL UNet answering velocity(x_s, sigma, cond).

    cond.prompt_embeds: (B, 77, 2048) penultimate CLIP-L and CLIP-G states; cond.pooled: (B, 1280) CLIP-G
    projection (the UNet's `text_embeds`); cond.extra["time_ids"]: (B, 6) micro-conditioning.
    `sigma_table` (t -> sigma, from alphas_cumprod) defaults to SDXL's schedule.
    """

    family = "sdxl"
    has_guidance_input = False

    def __init__(self, backbone: torch.nn.Module, sigma_table: Tensor | None = None):
        super().__init__(backbone)
        # A plain attribute, not a buffer: module.to(bfloat16) must not round the table.
        self.sigma_table = (sdxl_sigma_table() if sigma_table is None else sigma_table).detach().float().cpu()

    def timestep(self, sigma: Tensor) -> Tensor:
        """The DDPM timestep (float) the UNet is given at sigma."""
        return sigma_to_t(sigma, self.sigma_table)

    def epsilon(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """The UNet's raw epsilon prediction at x_s (our coordinates), float32."""
        dtype = self.backbone.dtype
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        c = latent_scale(sigma).to(x.device).view(-1, 1, 1, 1)
        x_t = (x.float() * c).to(dtype)
        time_ids = cond.extra.get("time_ids")
        if time_ids is None:
            raise ValueError("SDXL conditioning needs cond.extra['time_ids'] (B, 6)")
        eps = self.backbone(
            x_t,
            self.timestep(sigma),
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            added_cond_kwargs={"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids.to(dtype)},
            return_dict=False,
        )[0]
        return eps.float()

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        if guidance is not None:
            raise ValueError("SDXL has no guidance input; use CFG (models.base.guided_velocity)")
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        eps = self.epsilon(x, sigma, cond)
        v = (eps - x.float()) / (1 - sigma).view(-1, 1, 1, 1)
        return v.to(x.dtype)
