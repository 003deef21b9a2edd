"""What each benchmark runs on: a run config and its components, for the digits world and for mid-size
random-init SD3 and FLUX.

The mid-size models are the real diffusers classes (SD3Transformer2DModel with SD3.5's dual attention and qk
RMS-norm; FluxTransformer2DModel with guidance embedding, double- and single-stream blocks) from the config
dicts below, ~60-70M parameters: large enough that matrix work dominates on a CPU, small enough for minutes
on one. Their text encoders, VAE and DINOv2 backbone are the tiny random ones of `model.tiny=true`
(senseflow.models.tiny), so the figures are about the transformer, as at full scale. Everything runs in
fp32 on the CPU, without gradient checkpointing (a CPU benchmark of the passes, not of memory savings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from senseflow.config import RunConfig
from senseflow.world import Components

# hidden 512 (8 heads of 64): joint blocks of SD3.5 Medium's form, 6 deep
MID_SD3 = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=6, attention_head_dim=64,
               num_attention_heads=8, joint_attention_dim=96, caption_projection_dim=512, pooled_projection_dim=80,
               pos_embed_max_size=64, dual_attention_layers=(0, 1), qk_norm="rms_norm")
# hidden 512: 3 double-stream and 6 single-stream blocks, FLUX.1-dev's guidance embedding and RoPE split
MID_FLUX = dict(patch_size=1, in_channels=64, num_layers=3, num_single_layers=6, attention_head_dim=64,
                num_attention_heads=8, joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(16, 24, 24))

# fp32 everywhere, no checkpointing: see the module docstring
CPU_OVERRIDES = ["model.tiny=true", "model.dtype=float32", "train.trainable_dtype=float32",
                 "train.mixed_precision=no", "train.gradient_checkpointing=false"]

WORLDS = ("digits", "sd3", "flux")
PRESETS = {  # (world, method) -> preset
    ("digits", "senseflow"): "digits-senseflow", ("digits", "dmd2"): "digits-dmd2",
    ("sd3", "senseflow"): "sd35-medium-senseflow", ("sd3", "dmd2"): "sd35-medium-dmd2",
    ("flux", "senseflow"): "flux-dev-senseflow", ("flux", "dmd2"): "flux-dev-dmd2",
}


@dataclass
class Setup:
    world: str
    cfg: RunConfig
    components: Components
    params: int         # the teacher's parameters


def run_config(world: str, method: str, overrides: list[str], batch_size: int, threads: int) -> RunConfig:
    from senseflow import config as config_mod

    preset = PRESETS[(world, method)]
    extra = [] if world == "digits" else list(CPU_OVERRIDES)
    return config_mod.resolve(preset, extra + list(overrides) + [f"train.batch_size={batch_size}",
                                                                 f"train.threads={threads}"])


_cache: dict = {}


def _mid_bundle(family: str, resolution: int):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from senseflow.models.loading import bundle_from_components
    from senseflow.models.tiny import T5_MAX_LENGTH, tiny_components

    key = (family, resolution)
    if key not in _cache:
        comps = tiny_components(family, resolution, seed=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if family == "sd3":
                backbone = SD3Transformer2DModel(sample_size=resolution // 2, **MID_SD3)
            else:
                backbone = FluxTransformer2DModel(**MID_FLUX)
        comps["transformer"] = backbone.eval().requires_grad_(False)
        _cache[key] = bundle_from_components(family, comps, resolution=resolution,
                                             max_sequence_length=T5_MAX_LENGTH)
    return _cache[key]


def build(world: str, cfg: RunConfig, digits_world=None, tiny: bool = False) -> Setup:
    """The components a training run of `cfg` would use (digits: on `digits_world`, loaded once by the caller).
    tiny: SD3 / FLUX with the tiny transformer of `model.tiny=true` instead of the mid-size one (tests)."""
    if world == "digits":
        from senseflow.worlds.digits.components import world_components

        comps = world_components(cfg, digits_world)
    else:
        from senseflow.components import synthetic_components

        res = cfg.model.resolution
        if tiny:
            from senseflow.models.tiny import tiny_bundle

            bundle = tiny_bundle(world, resolution=res, seed=0)
        else:
            bundle = _mid_bundle(world, res)
        comps = synthetic_components(cfg, bundle, res)
    params = sum(p.numel() for p in comps.bundle.teacher.parameters())
    return Setup(world, cfg, comps, params)


def digits_world(quick: bool):
    """The digits world (the default one, or the quick one of the tests), built or loaded from the cache."""
    from senseflow.worlds.digits import DigitsWorldConfig, build_world

    cfg = DigitsWorldConfig.quick() if quick else None
    return build_world(cfg, progress=False, figures=not quick, grids=not quick)
