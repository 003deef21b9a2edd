"""The published architectures of the paper's networks, as configs written in code (no files, no downloads).

Each entry is the `config.json` of the released component (diffusers / transformers class plus its
arguments), so `build(name)` on the `meta` device gives the real architecture with no memory behind it:
parameter counts, shapes and FLOP counts of the full-size models on any machine (senseflow.planner).
The counts these configs give, and the published sizes they are checked against, are in docs/PLANNER.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from senseflow import precision


@dataclass(frozen=True)
class Architecture:
    """One released network: its class (module path, class name), config, and the published size in words."""

    name: str
    module: str
    cls: str
    config: dict = field(default_factory=dict)
    published: str = ""


_SD35_COMMON = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                    joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm")
_VAE_COMMON = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                   norm_num_groups=32, sample_size=1024, act_fn="silu")

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("sd35-large", "diffusers", "SD3Transformer2DModel", dict(
        _SD35_COMMON, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192,
        dual_attention_layers=()), "stabilityai/stable-diffusion-3.5-large transformer/ (model card: 8.1B)"),
    Architecture("sd35-medium", "diffusers", "SD3Transformer2DModel", dict(
        _SD35_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13))), "stabilityai/stable-diffusion-3.5-medium transformer/ (model card: 2.5B)"),
    Architecture("flux-dev", "diffusers", "FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56)), "black-forest-labs/FLUX.1-dev transformer/ (model card: 12B)"),
    Architecture("sdxl-unet", "diffusers", "UNet2DConditionModel", dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0),
        "stabilityai/stable-diffusion-xl-base-1.0 unet/ (SDXL paper: 2.6B)"),
    Architecture("vae-sd3", "diffusers", "AutoencoderKL", dict(
        _VAE_COMMON, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False), "stable-diffusion-3.5-* vae/ (16-channel AutoencoderKL, 84M)"),
    Architecture("vae-flux", "diffusers", "AutoencoderKL", dict(
        _VAE_COMMON, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False), "FLUX.1-dev vae/ (16-channel AutoencoderKL, 84M)"),
    Architecture("vae-sdxl", "diffusers", "AutoencoderKL", dict(
        _VAE_COMMON, latent_channels=4, scaling_factor=0.13025, use_quant_conv=True, use_post_quant_conv=True),
        "stable-diffusion-xl-base-1.0 vae/ (4-channel AutoencoderKL, 84M)"),
    Architecture("clip-l", "transformers", "CLIPTextModel", dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
        "openai/clip-vit-large-patch14 text tower (123M); FLUX.1 and SDXL text_encoder/"),
    Architecture("clip-l-proj", "transformers", "CLIPTextModelWithProjection", dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
        "CLIP ViT-L/14 text tower with its projection: SD3.5 text_encoder/ (124M)"),
    Architecture("clip-bigg", "transformers", "CLIPTextModelWithProjection", dict(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
        "OpenCLIP ViT-bigG/14 text tower: SD3.5 and SDXL text_encoder_2/ (695M)"),
    Architecture("t5-xxl", "transformers", "T5EncoderModel", dict(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False), "google/t5-v1_1-xxl encoder: SD3.5 text_encoder_3/, FLUX.1 text_encoder_2/ (4.7B)"),
    Architecture("dinov2-large", "transformers", "Dinov2Model", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14, image_size=518,
        layerscale_value=1.0), "facebook/dinov2-large (DINOv2 paper: ViT-L/14, 300M)"),
    Architecture("dinov2-base", "transformers", "Dinov2Model", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14, image_size=518,
        layerscale_value=1.0), "facebook/dinov2-base (DINOv2 paper: ViT-B/14, 86M)"),
    Architecture("dinov2-small", "transformers", "Dinov2Model", dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=518,
        layerscale_value=1.0), "facebook/dinov2-small (DINOv2 paper: ViT-S/14, 21M)"),
]}

# What each teacher family runs with: denoiser, VAE, text encoders (in the pipeline's order).
FAMILY_PARTS = {
    ("sd3", "stabilityai/stable-diffusion-3.5-large"): ("sd35-large", "vae-sd3", ("clip-l-proj", "clip-bigg", "t5-xxl")),
    ("sd3", "stabilityai/stable-diffusion-3.5-medium"): ("sd35-medium", "vae-sd3", ("clip-l-proj", "clip-bigg", "t5-xxl")),
    ("flux", "black-forest-labs/FLUX.1-dev"): ("flux-dev", "vae-flux", ("clip-l", "t5-xxl")),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"): ("sdxl-unet", "vae-sdxl", ("clip-l", "clip-bigg")),
}
BACKBONES = {"facebook/dinov2-large": "dinov2-large", "facebook/dinov2-base": "dinov2-base",
             "facebook/dinov2-small": "dinov2-small"}


def _class(arch: Architecture):
    import importlib

    return getattr(importlib.import_module(arch.module), arch.cls)


def build(name: str, device: str | torch.device = "meta", dtype: torch.dtype | None = None, **overrides) -> nn.Module:
    """The named architecture built from its in-code config on `device` (default meta: no memory, no init
    cost). `overrides` change config entries (e.g. num_layers=2 for a cut-down copy of the same blocks)."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    cls = _class(arch)
    config = {**arch.config, **overrides}
    with torch.device(device):
        if arch.module == "transformers":
            import transformers

            cfg_cls = getattr(transformers, cls.config_class.__name__)
            model = cls(cfg_cls(**config))
        else:
            model = cls(**config)
    if dtype is not None:
        precision.cast(model, dtype)
    return model.eval()


def parameter_count(module: nn.Module) -> int:
    """Parameters of a module, each shared tensor once (T5's tied embedding is counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def family_parts(family: str, teacher: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(denoiser, vae, text encoders) architecture names of a teacher, or None when it is not a paper teacher."""
    key = (family, teacher)
    if key in FAMILY_PARTS:
        return FAMILY_PARTS[key]
    return None
