"""What each benchmark runs on: a run config and its components, for the digits world and for mid-size
random-init SD3 and FLUX.

The mid-size models are the real diffusers classes (SD3Transformer2DModel with SD3.5's dual attention and qk
RMS-norm; FluxTransformer2DModel with guidance embedding, double- and single-stream blocks) from the config
dicts below, ~60-70M parameters: large enough that matrix work dominates on a CPU, small enough for minutes
on one. Their text encoders, VAE and DINOv2 backbone are the tiny random ones of `model.tiny=true`
(senseflow.models.tiny), so the figures are about the transformer, as at full scale. On the CPU everything
runs in fp32, without gradient checkpointing (a CPU benchmark of the passes, not of memory savings). On a
CUDA GPU (`device="cuda"`) the run follows the paper's precision: teacher, VAE and text encoders stored in
bf16, G, F and the discriminator's heads in fp32, every step under bf16 autocast; still no checkpointing.
The digits world runs on the CPU only (its networks are too small to occupy a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from senseflow.config import RunConfig
from senseflow.precision import DTYPES
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

# the paper's precision on a GPU: see the module docstring
GPU_OVERRIDES = ["model.tiny=true", "model.dtype=bfloat16", "train.trainable_dtype=float32",
                 "train.mixed_precision=bf16", "train.gradient_checkpointing=false"]

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
    device: torch.device = torch.device("cpu")


def run_config(world: str, method: str, overrides: list[str], batch_size: int, threads: int,
               device: str = "cpu") -> RunConfig:
    from senseflow import config as config_mod

    preset = PRESETS[(world, method)]
    gpu = torch.device(device).type == "cuda"
    extra = [] if world == "digits" else list(GPU_OVERRIDES if gpu else CPU_OVERRIDES)
    return config_mod.resolve(preset, extra + list(overrides) + [f"train.batch_size={batch_size}",
                                                                 f"train.threads={threads}"])


_cache: dict = {}


def _mid_bundle(family: str, resolution: int, device: torch.device, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from senseflow.models.loading import bundle_from_components
    from senseflow.models.tiny import T5_MAX_LENGTH, tiny_components

    key = (family, resolution, str(device), dtype)
    if key not in _cache:
        comps = tiny_components(family, resolution, seed=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if family == "sd3":
                backbone = SD3Transformer2DModel(sample_size=resolution // 2, **MID_SD3)
            else:
                backbone = FluxTransformer2DModel(**MID_FLUX)
        comps["transformer"] = backbone.eval().requires_grad_(False)
        _cache[key] = _place(bundle_from_components(family, comps, resolution=resolution,
                                                    max_sequence_length=T5_MAX_LENGTH), device, dtype)
    return _cache[key]


def _place(bundle, device: torch.device, dtype: torch.dtype):
    """The bundle with its frozen networks (teacher, VAE, text encoders) on `device` at `dtype` (model.dtype)."""
    for frozen in (bundle.teacher, bundle.codec, bundle.text_encoder):
        frozen.to(device=device, dtype=dtype)
    return bundle


def build(world: str, cfg: RunConfig, digits_world=None, tiny: bool = False, device: str = "cpu") -> Setup:
    """The components a training run of `cfg` would use (digits: on `digits_world`, loaded once by the caller).
    tiny: SD3 / FLUX with the tiny transformer of `model.tiny=true` instead of the mid-size one (tests).
    device: where the frozen networks are put, at model.dtype (SD3 / FLUX; the digits world is CPU-only)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        from senseflow import cuda_kernels

        cuda_kernels.configure()  # as training does
    if world == "digits":
        if dev.type != "cpu":
            raise ValueError(f"the digits world is benchmarked on the CPU only, not on {dev}")
        from senseflow.worlds.digits.components import world_components

        comps = world_components(cfg, digits_world)
    else:
        from senseflow.components import synthetic_components

        res = cfg.model.resolution
        if tiny:
            from senseflow.models.tiny import tiny_bundle

            bundle = _place(tiny_bundle(world, resolution=res, seed=0), dev, DTYPES[cfg.model.dtype])
        else:
            bundle = _mid_bundle(world, res, dev, DTYPES[cfg.model.dtype])
        comps = synthetic_components(cfg, bundle, res)
    params = sum(p.numel() for p in comps.bundle.teacher.parameters())
    return Setup(world, cfg, comps, params, dev)


def distiller(setup: Setup):
    """The Distiller a training run builds, with its networks on the setup's device (senseflow.train does
    the same in its `prepare`); seeded by the config."""
    from senseflow.distill import Distiller

    cfg, comps = setup.cfg, setup.components
    b = comps.bundle
    torch.manual_seed(cfg.train.seed)
    return Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table,
                     make_discriminator=comps.make_discriminator, prepare=lambda d: d.to(setup.device))


def batch(setup: Setup, iteration: int):
    """The training batch of `iteration` (drawn as senseflow.train draws it), on the setup's device."""
    from senseflow.distill import step_rng

    cfg = setup.cfg
    b = setup.components.data.batch(iteration, cfg.train.batch_size, step_rng(cfg.train.seed, iteration, stream=2))
    return b.to(setup.device)


def autocast(setup: Setup):
    """The step's compute context: bf16 autocast on a GPU where the config says so, nothing on the CPU."""
    from senseflow import precision

    return precision.autocast(setup.device, setup.cfg.train.mixed_precision)


def digits_world(quick: bool):
    """The digits world (the default one, or the quick one of the tests), built or loaded from the cache."""
    from senseflow.worlds.digits import DigitsWorldConfig, build_world

    cfg = DigitsWorldConfig.quick() if quick else None
    return build_world(cfg, progress=False, figures=not quick, grids=not quick)
