"""Build what a run needs from its config: the model bundle, the data, the discriminator and the renderer.

- `model.family: digits` -> the embedded digits world (senseflow.worlds.digits), built or loaded from cache;
- `model.tiny: true` -> random-init tiny versions of the SD3 / FLUX / SDXL architectures with synthetic data
  (smoke runs and tests);
- otherwise -> the real teacher from a hub id or local diffusers directory, real (image, caption) data
  from `data.path`, and the DINOv2 discriminator backbone from `gan.backbone`.
"""

from __future__ import annotations

import torch

from senseflow.config import RunConfig
from senseflow.precision import DTYPES as _DTYPES
from senseflow.world import Components, make_discriminator_factory, to_uint8


def build_components(cfg: RunConfig, progress: bool = True, with_data: bool = True) -> Components:
    """with_data=False: a real teacher without its training data (sampling and exporting a trained student
    need no `data.path`); its `data` is None."""
    family = cfg.model.family
    if family == "digits":
        from senseflow.worlds.digits.components import digits_components

        return digits_components(cfg, progress=progress)
    if cfg.model.tiny:
        return _tiny_components(cfg)
    return _real_components(cfg, with_data)


def _tiny_components(cfg: RunConfig) -> Components:
    from senseflow.models.tiny import tiny_bundle

    res = cfg.model.resolution if cfg.model.resolution <= 64 else 32
    bundle = tiny_bundle(cfg.model.family, resolution=res, seed=0, dtype=_DTYPES[cfg.model.dtype])
    return synthetic_components(cfg, bundle, res)


def synthetic_components(cfg: RunConfig, bundle, res: int) -> Components:
    """Components around a bundle without training data: synthetic pairs, a tiny random DINOv2 and, for
    gan.text_condition=clip, a tiny random CLIP text tower (tiny mode and the mid-size benchmarks)."""
    from senseflow.data import SyntheticData
    from senseflow.discriminators import tiny_dinov2

    with torch.no_grad():
        text_dim = bundle.text_encoder.encode(["x"]).pooled.shape[-1]
    backbone = tiny_dinov2(seed=0, hidden_size=32, layers=4, patch_size=4, image_size=res)
    data = SyntheticData(res, bundle.codec, bundle.text_encoder, channels=bundle.image_channels,
                         sample_posterior=cfg.data.latents == "posterior_sample")
    clip = None
    if cfg.gan.kind == "vfm" and cfg.gan.text_condition == "clip":
        from senseflow.models.clip_text import tiny_clip_text

        clip = tiny_clip_text(seed=0)  # same architecture as CLIP's text tower, random weights, no files
    return Components(bundle=bundle, data=data,
                      make_discriminator=make_discriminator_factory(cfg, backbone, text_dim, res, bundle.latent_shape[-2:],
                                                                    text_encoder=clip),
                      render=lambda x: to_uint8(bundle.codec.decode(x)),
                      sample_prompts=SyntheticData.PROMPTS[:2])


def _real_components(cfg: RunConfig, with_data: bool = True) -> Components:
    from senseflow.data import ImageTextData
    from senseflow.models.loading import load_bundle

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle = load_bundle(cfg.model.family, cfg.model.teacher, resolution=cfg.model.resolution,
                         dtype=_DTYPES[cfg.model.dtype], device=device, with_t5=cfg.model.with_t5)
    if not with_data:  # sampling or exporting a trained student: no data, no discriminator
        return Components(bundle=bundle, data=None,
                          render=lambda x: to_uint8(bundle.codec.decode(x.to(_DTYPES[cfg.model.dtype]))))
    with torch.no_grad():
        text_dim = bundle.text_encoder.encode(["x"]).pooled.shape[-1]
    data = ImageTextData(cfg.data.path, cfg.model.resolution, bundle.codec, bundle.text_encoder,
                         sample_posterior=cfg.data.latents == "posterior_sample")
    return Components(bundle=bundle, data=data,
                      make_discriminator=make_discriminator_factory(cfg, cfg.gan.backbone, text_dim, cfg.model.resolution,
                                                                         bundle.latent_shape[-2:]),
                      render=lambda x: to_uint8(bundle.codec.decode(x.to(_DTYPES[cfg.model.dtype]))),
                      sample_prompts=[p for _, p in data.pairs[:4]])
