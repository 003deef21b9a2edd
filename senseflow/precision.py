"""The precision policy of a run, the same in one process and in several (DDP, FSDP, HSDP).

* The generator G and the fake score F store their weights in `train.trainable_dtype`: float32 by default
  (fp32 master weights, as the authors train SD3.5 and SDXL), bfloat16 by explicit choice (as the authors
  train FLUX). Both start as copies of the teacher, so without this cast they would inherit its dtype.
* The discriminator's trainable heads are always float32 (every one of the authors' trainers, FLUX's
  included, keeps them in fp32).
* The frozen teacher, text encoders and VAE are loaded in `model.dtype` (senseflow.components); the
  discriminator's frozen DINOv2 backbone is cast to it here.
* Compute: on a GPU with `train.mixed_precision=bf16`, under bf16 autocast (accelerate's in one process;
  in several, FSDP2's MixedPrecisionPolicy gathers the weights in bf16 as well, senseflow.parallel). On a
  CPU each module computes in its stored dtype.

Why it matters: a bf16 weight keeps 8 significant bits, so an update smaller than half its spacing
(|w| / 512 to |w| / 256) rounds away. AdamW's first steps move each weight by about lr, so at lr 1e-6 a
bf16 copy of a transformer barely changes, and an IDA lerp of (1 - lam) * (theta - phi) rounds away
just as often. `step_warnings` names such settings before training starts.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEAD_DTYPE = torch.float32
# a setting is reported when a step of size lr moves fewer than this fraction of a module's weights
MOVABLE_FLOOR = 0.05
_SAMPLE = 1 << 16  # weights inspected per parameter tensor (strided), enough for a fraction to 1e-2


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _backbone(discriminator: nn.Module | None) -> nn.Module | None:
    return getattr(discriminator, "backbone", None) if discriminator is not None else None


def cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating parameters and buffers to `dtype` in place, tensor by tensor (`Module.to` swaps whole
    parameters, which fake tensors, as the planner traces them, do not support)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and t.dtype != dtype:
                t.data = t.data.to(dtype)
    return module


def apply(distiller, cfg) -> None:
    """Cast the Distiller's modules in place to the policy (before sharding and before the optimizers)."""
    trainable = DTYPES[cfg.train.trainable_dtype]
    frozen = DTYPES[cfg.model.dtype]
    cast(distiller.generator, trainable)
    cast(distiller.fake_score, trainable)
    disc = distiller.discriminator
    if disc is not None:
        with torch.no_grad():
            for p in disc.trainable_parameters():
                p.data = p.data.to(HEAD_DTYPE)
        backbone = _backbone(disc)
        if backbone is not None:
            cast(backbone, frozen)


def describe(distiller, cfg, compute: str) -> dict[str, str]:
    """What status.json records: each part's stored dtype and the compute precision."""
    def first(module) -> str:
        p = next(iter(module.parameters()), None) if module is not None else None
        return dtype_name(p.dtype) if p is not None else "none"

    disc = distiller.discriminator
    heads = disc.trainable_parameters() if disc is not None else []
    return {"trainable_dtype": cfg.train.trainable_dtype, "generator": first(distiller.generator),
            "fake_score": first(distiller.fake_score), "teacher": first(distiller.teacher),
            "discriminator_heads": dtype_name(heads[0].dtype) if heads else "none",
            "discriminator_backbone": first(_backbone(disc)), "compute": compute}


def autocast(device: torch.device, mixed_precision: str):
    """The compute context outside the training step (sampling, evaluation): the run's autocast on a GPU,
    nothing on a CPU (where accelerate's autocast is off too)."""
    import contextlib

    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def movable_fraction(params, lr: float) -> float:
    """Fraction of the weights that a step of size `lr` changes at all in their stored dtype (a strided
    sample of each tensor; sharded parameters are read through their local shard)."""
    moved = total = 0
    with torch.no_grad():
        for p in params:
            w = p.to_local() if hasattr(p, "to_local") else p
            flat = w.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            flat = flat[:: max(1, flat.numel() // _SAMPLE)]
            stepped = (flat.double() + lr).to(flat.dtype)
            moved += int((stepped != flat).sum())
            total += flat.numel()
    return moved / total if total else 1.0


def step_warnings(distiller, cfg) -> list[str]:
    """One line per trained part whose learning rate is below its weights' resolution (fewer than
    MOVABLE_FLOOR of them would move in a step): such a setting cannot train that part."""
    o = cfg.optim
    parts = [("generator", distiller.generator.parameters(), "optim.lr_generator", o.lr_generator),
             ("fake score", distiller.fake_score.parameters(), "optim.lr_fake", o.lr_fake)]
    if distiller.discriminator is not None:
        parts.append(("discriminator heads", distiller.discriminator.trainable_parameters(), "optim.lr_disc", o.lr_disc))
    out = []
    for name, params, key, lr in parts:
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        frac = movable_fraction(params, lr)
        if frac < MOVABLE_FLOOR:
            dtype = dtype_name(params[0].dtype)
            fix = ("set train.trainable_dtype=float32 or raise the learning rate" if dtype == "bfloat16"
                   else "raise the learning rate")
            out.append(f"{key}={lr:g} is below the resolution of the {name}'s {dtype} weights: a step of that size "
                       f"changes {100 * frac:.1f}% of them; {fix}")
    return out
