"""Tiny random-init versions of the real architectures, for tests and CPU smoke runs. No files, no downloads.

Each family is built from in-code configs of the SAME classes as the real model (SD3Transformer2DModel with
SD3.5's dual attention and qk RMS-norm; FluxTransformer2DModel with guidance_embeds=True like FLUX.1-dev;
an SDXL-style UNet2DConditionModel with text_time added conditioning; CLIP / T5 text encoders; an
AutoencoderKL with the family's scaling and shift factors), with in-memory tokenizers (a byte-level CLIP
vocabulary without merges, a small Unigram T5 vocabulary). The two CLIPs of a family get different widths
so that any mix-up of their order changes shapes or values.

    tiny_bundle(family)                  -> ModelBundle (as load_bundle would return)
    tiny_pipeline(family, bundle=bundle) -> the diffusers pipeline sharing that bundle's objects
"""

from __future__ import annotations

import torch

from senseflow.models.base import ModelBundle

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 16  # tiny stand-in for SD3's 256 / FLUX's 512 T5 tokens
_T5_WORDS = ("a an the of and with in on photo painting drawing portrait picture cat dog squirrel burger red blue "
             "green small large eating sitting astronaut horse handwritten digit").split()

# The real families' VAE factors (config.json of the released VAEs).
_VAE_FACTORS = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159), "sdxl": (0.13025, None)}


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2 / CLIP convention)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, spare = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + spare))
            spare += 1
    return symbols


def clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """A character-level CLIP tokenizer (514 tokens: bytes, end-of-word bytes, start/end of text)."""
    from transformers import CLIPTokenizer

    chars = _byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    tok.model_max_length = max_length
    return tok


def t5_tokenizer():
    """A small Unigram (SentencePiece-style) T5 tokenizer: a few words plus single letters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    pieces += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(_T5_WORDS)]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip(tok, hidden: int, projection: int | None, layers: int = 3):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length, hidden_act="gelu",
                         layer_norm_eps=1e-5, projection_dim=projection or hidden, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return model.eval().requires_grad_(False)


def tiny_clip_text_model(seed: int = 0, hidden: int = 32, projection: int = 24):
    """(CLIPTextModelWithProjection, tokenizer): a random-init tiny CLIP text tower, deterministic in seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = clip_tokenizer()
        return _clip(tok, hidden, projection), tok


def _t5(tok, d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval().requires_grad_(False)


def _vae(family: str, latent_channels: int, resolution: int):
    from diffusers import AutoencoderKL

    scale, shift = _VAE_FACTORS[family]
    quant = family == "sdxl"  # SD3/FLUX VAEs have no quant convs, SDXL's has
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=latent_channels, norm_num_groups=4, sample_size=resolution,
                        scaling_factor=scale, shift_factor=shift, use_quant_conv=quant, use_post_quant_conv=quant)
    return vae.eval().requires_grad_(False)  # downsampling factor 2


def tiny_components(family: str, resolution: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Pipeline components (named as in the family's diffusers pipeline) of a tiny random model.

    Deterministic in `seed`; the global RNG state is left untouched.
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    if resolution % 4:
        raise ValueError(f"tiny models need a resolution divisible by 4, got {resolution}")
    latent = resolution // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = clip_tokenizer()
        if family == "sd3":
            t5_tok = t5_tokenizer()
            te1, te2 = _clip(tok, 32, 32), _clip(tok, 48, 48)      # CLIP-L / CLIP-G stand-ins (with projection)
            te3 = _t5(t5_tok, 96)                                  # T5 width 96 > 32 + 48: CLIP states get padded
            backbone = SD3Transformer2DModel(
                sample_size=latent, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
                num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=80,
                pos_embed_max_size=64, dual_attention_layers=(0,), qk_norm="rms_norm")
            comps = dict(transformer=backbone, text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
                         tokenizer_2=clip_tokenizer(), text_encoder_3=te3, tokenizer_3=t5_tok,
                         vae=_vae(family, 16, resolution), scheduler_config=dict(shift=3.0))
        elif family == "flux":
            t5_tok = t5_tokenizer()
            te1, te2 = _clip(tok, 32, None), _t5(t5_tok, 48)       # CLIP-L (pooler output) and T5
            backbone = FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(4, 4, 8))
            comps = dict(transformer=backbone, text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=t5_tok,
                         vae=_vae(family, 16, resolution))
        elif family == "sdxl":
            te1, te2 = _clip(tok, 32, None), _clip(tok, 48, 40)    # CLIP-L (no projection), CLIP-G (projection 40)
            backbone = UNet2DConditionModel(
                sample_size=latent, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=8,
                cross_attention_dim=32 + 48, transformer_layers_per_block=(1, 2), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 40)
            comps = dict(unet=backbone, text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=clip_tokenizer(),
                         vae=_vae(family, 4, resolution), model_index=dict(force_zeros_for_empty_prompt=True))
        else:
            raise ValueError(f"family must be one of ('sd3', 'flux', 'sdxl'), got {family!r}")
    backbone.eval().requires_grad_(False)
    if dtype != torch.float32:
        from diffusers.utils import logging as dlogging

        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # tiny models have no modules that must stay fp32; skip the cast warning
        try:
            for value in comps.values():
                if isinstance(value, torch.nn.Module):
                    value.to(dtype)
        finally:
            dlogging.set_verbosity(level)
    return comps


def tiny_bundle(family: str, resolution: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A random-init tiny ModelBundle of the family (latents (16 or 4, resolution/2, resolution/2))."""
    from senseflow.models.loading import bundle_from_components

    comps = tiny_components(family, resolution, seed, dtype)
    return bundle_from_components(family, comps, resolution=resolution, max_sequence_length=T5_MAX_LENGTH)


def tiny_pipeline(family: str, resolution: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32, *,
                  bundle: ModelBundle | None = None, scheduler=None):
    """The family's diffusers pipeline (StableDiffusion3Pipeline / FluxPipeline / StableDiffusionXLPipeline)
    assembled in memory from `bundle`'s objects (a new tiny bundle if None), so both share weights.

    Call it with max_sequence_length=T5_MAX_LENGTH (SD3, FLUX) to match the bundle's text encoder.
    """
    from senseflow.models.loading import pipeline_from_bundle

    bundle = bundle or tiny_bundle(family, resolution, seed, dtype)
    if bundle.family != family:
        raise ValueError(f"bundle is {bundle.family!r}, asked for {family!r}")
    return pipeline_from_bundle(bundle, scheduler)
