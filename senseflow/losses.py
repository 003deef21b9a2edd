"""SenseFlow / DMD2 losses as pure functions of tensors and modules (no I/O, no state).

Shapes: images/latents (B, C, H, W); sigma (B,) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from senseflow import flow

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- DMD
def dmd_gradient(x0_g: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """The normalised DMD direction g = (x0_fake - x0_real) / mean_{C,H,W}|x0_g - x0_real|, fp32, non-finite -> 0.

    Moving x0_g against g moves it from where the fake score thinks samples are towards where the
    teacher (real score) does. The per-sample normaliser makes the step size scale-free.
    """
    x0_g, x0_real, x0_fake = (t.detach().float() for t in (x0_g, x0_real, x0_fake))
    dims = tuple(range(1, x0_g.ndim))
    norm = (x0_g - x0_real).abs().mean(dim=dims, keepdim=True)
    g = (x0_fake - x0_real) / norm
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x0_g: Tensor, g: Tensor) -> Tensor:
    """L = 0.5 * mean((x0_g - sg(x0_g - g))^2); its gradient w.r.t. x0_g is g / numel."""
    x = x0_g.float()
    target = (x - g).detach()
    return 0.5 * F.mse_loss(x, target, reduction="mean")


# ----------------------------------------------------------------------------- fake score
def fake_score_loss(v_pred: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
    """Flow matching on generator samples: mean ||v_phi(x_t) - (noise - sg(x0))||^2."""
    target = flow.velocity_target(x0.detach(), noise)
    return F.mse_loss(v_pred.float(), target.float())


def epsilon_loss(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """SDXL's fake-score variant: epsilon MSE."""
    return F.mse_loss(eps_pred.float(), noise.float())


# ----------------------------------------------------------------------------- ISG
def pseudo_huber(a: Tensor, b: Tensor, c: float = 1e-3) -> Tensor:
    """mean(sqrt((a - b)^2 + c^2) - c): L1-like far away, L2-like within c."""
    d = a.float() - b.float()
    return (torch.sqrt(d * d + c * c) - c).mean()


def distance(a: Tensor, b: Tensor, kind: str = "pseudo_huber", c: float = 1e-3) -> Tensor:
    if kind == "pseudo_huber":
        return pseudo_huber(a, b, c)
    if kind == "l2":
        return F.mse_loss(a.float(), b.float())
    raise ValueError(f"distance kind must be 'pseudo_huber' or 'l2', got {kind!r}")


@torch.no_grad()
def isg_target(x_i: Tensor, sigma_i: Tensor, sigma_next: Tensor, t_mid: Tensor,
               teacher_velocity: Callable[[Tensor, Tensor], Tensor],
               generator_velocity: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Intra-segment guidance target for the segment sigma_i -> sigma_next (docs/ALGORITHM.md, ISG).

    One guided teacher Euler step from sigma_i to t_mid, then the (frozen) generator's own step from
    t_mid to sigma_next:
        x_mid = x_i + (t_mid - sigma_i) * v_teacher(x_i, sigma_i)
        x_tar = x_mid + (sigma_next - t_mid) * v_G(x_mid, t_mid)
    """
    x_mid = flow.euler_step(x_i, teacher_velocity(x_i, sigma_i), sigma_i, t_mid)
    return flow.euler_step(x_mid, generator_velocity(x_mid, t_mid), t_mid, sigma_next)


def isg_loss(v_g: Tensor, x_i: Tensor, sigma_i: Tensor, sigma_next: Tensor, x_tar: Tensor,
             kind: str = "pseudo_huber", c: float = 1e-3) -> Tensor:
    """d(x_dir, sg(x_tar)) with the generator's direct jump x_dir = x_i + (sigma_next - sigma_i) v_G(x_i)."""
    x_dir = flow.euler_step(x_i, v_g, sigma_i, sigma_next)
    return distance(x_dir, x_tar.detach(), kind, c)


def isg_teacher_x0_loss(x0_g: Tensor, x0_teacher: Tensor, scale: float, kind: str = "pseudo_huber",
                        c: float = 1e-3) -> Tensor:
    """The authors' released SDXL form of ISG: d(scale * x0_G, sg(scale * x0_teacher)).

    Their SDXL trainer re-noises the teacher's one-step x0 (guided, at the anchor) to a midpoint with the
    teacher's own noise, reads x0 back from it with that same noise (which returns the teacher's x0 exactly),
    and re-noises both it and G's x0 to the segment end with one shared noise; the noise cancels in the
    difference, leaving scale * (x0_G - x0_teacher) with scale = sqrt(alpha_bar) at the segment end. The
    value does not depend on the midpoint.
    """
    return distance(scale * x0_g.float(), (scale * x0_teacher.float()).detach(), kind, c)


def sample_isg_midpoint(idx_i: Tensor, idx_next: Tensor, margin: int, table: Tensor,
                        rng: torch.Generator | None = None) -> Tensor:
    """t_mid = table[j], j uniform in [idx_next + margin, idx_i - margin] per sample (idx_next = -1 for sigma 0).

    Indices are into the family's sigma table (FLUX: sigma*1000 = j + 1, so margin 20 keeps t_mid 20/1000
    from both ends); when the segment is too short for the margin the midpoint is its middle index.
    """
    lo = idx_next + margin
    hi = idx_i - margin
    bad = hi < lo
    mid = (idx_i + idx_next) // 2
    lo = torch.where(bad, mid, lo)
    hi = torch.where(bad, mid, hi)
    u = torch.rand(idx_i.shape, generator=rng)
    j = lo + torch.floor(u * (hi - lo + 1).float()).long()
    j = torch.minimum(j, hi).clamp(0, len(table) - 1)
    return table[j]


# ----------------------------------------------------------------------------- GAN
def omega(sigma: Tensor, kind: str) -> Tensor:
    """Weight of the GAN terms at the generator's anchor sigma.

    paper: (1 - sigma)^2 (FLUX settings); sd35: the authors' SD3.5 weight, the square of the shift-3 training
    table read backwards at the anchor's index i (table[999 - i]^2 = shift(1 - u + 1/1000, 3)^2 with
    u = unshift(sigma, 3) = (i + 1) / 1000), a larger middle-anchor weight; sdxl: sqrt(alpha_bar) written in
    sigma; one: 1.
    """
    s = sigma.float()
    if kind == "paper":
        return (1 - s) ** 2
    if kind == "sd35":
        unshifted = s / (3 - 2 * s)
        return flow.shift((1 - unshifted + 1e-3).clamp(max=1.0), 3.0) ** 2
    if kind == "sdxl":
        return (1 - s) / torch.sqrt((1 - s) ** 2 + s ** 2)
    if kind == "one":
        return torch.ones_like(s)
    raise ValueError(f"omega kind must be one of paper, sd35, sdxl, one; got {kind!r}")


def _per_sample_weight(w: Tensor | float, logits: Tensor) -> Tensor:
    w = torch.as_tensor(w, dtype=logits.dtype, device=logits.device)
    return w.view(-1, *([1] * (logits.ndim - 1))) if w.ndim == 1 else w


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """mean(w * (relu(1 - D(real)) + relu(1 + D(fake)))); logits (B, N), weight scalar or (B,)."""
    w = _per_sample_weight(weight, real_logits)
    return (w * (F.relu(1 - real_logits) + F.relu(1 + fake_logits))).mean()


def hinge_g_loss(fake_logits: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """mean(-w * D(fake))."""
    return (-_per_sample_weight(weight, fake_logits) * fake_logits).mean()


def logistic_d_loss(real_logits: Tensor, fake_logits: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """Non-saturating logistic loss for the discriminator (DMD2's head): softplus(-real) + softplus(fake)."""
    w = _per_sample_weight(weight, real_logits)
    return (w * (F.softplus(-real_logits) + F.softplus(fake_logits))).mean()


def logistic_g_loss(fake_logits: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """Non-saturating generator loss softplus(-D(fake))."""
    return (_per_sample_weight(weight, fake_logits) * F.softplus(-fake_logits)).mean()


# ----------------------------------------------------------------------------- IDA
@torch.no_grad()
def ida_update(fake_params: Iterable[Tensor], gen_params: Iterable[Tensor], lam: float) -> None:
    """phi <- lam * phi + (1 - lam) * theta, in place, for matching parameter lists.

    Sharded parameters (FSDP2 DTensors): both models are sharded alike, so each rank lerps its local shard
    of phi against the matching local shard of theta, with no communication; differing placements are an
    error. lam = 1 leaves phi untouched.
    """
    fake_params, gen_params = list(fake_params), list(gen_params)
    if len(fake_params) != len(gen_params):
        raise ValueError(f"IDA needs matching parameter lists, got {len(fake_params)} and {len(gen_params)}")
    if lam == 1.0:
        return
    for p, q in zip(fake_params, gen_params):
        if p.shape != q.shape:
            raise ValueError(f"IDA parameter shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
        p_dt, q_dt = hasattr(p, "placements"), hasattr(q, "placements")
        if p_dt or q_dt:
            if not (p_dt and q_dt) or p.placements != q.placements or p.device_mesh != q.device_mesh:
                raise ValueError("IDA needs the fake score and generator sharded alike (same FSDP units and mesh)")
            p, q = p.to_local(), q.to_local()
        p.lerp_(q.to(p.dtype), 1.0 - lam)


def ida_update_modules(fake_score: torch.nn.Module, generator: torch.nn.Module, lam: float) -> None:
    """IDA over every trainable parameter, paired by name (both are copies of the teacher). FSDP-sharded
    modules are resharded first (a root unit may still hold its gathered weights after a forward)."""
    for module in (fake_score, generator):
        for sub in module.modules():
            if hasattr(sub, "reshard") and hasattr(sub, "unshard"):  # torch.distributed.fsdp.FSDPModule
                sub.reshard()
    f = {n: p for n, p in fake_score.named_parameters() if p.requires_grad}
    g = {n: p for n, p in generator.named_parameters() if p.requires_grad}
    if f.keys() != g.keys():
        missing = sorted(set(f) ^ set(g))[:3]
        raise ValueError(f"IDA needs the fake score and generator to share parameter names; differing: {missing}")
    names = sorted(f)
    ida_update([f[n] for n in names], [g[n] for n in names], lam)
