"""FLUX.1 (diffusers FluxTransformer2DModel) as a `Denoiser`.

FLUX already predicts the rectified-flow velocity v = noise - x0 and takes timestep = sigma (it multiplies
by 1000 internally), so the adapter only changes layout:

* latents (B, C, H, W) are cut into 2x2 patches and flattened to tokens (B, H/2 * W/2, 4C), channel order
  (c, dy, dx), which is the layout the FLUX weights were trained on;
* every image token gets a 3-d position id (0, row, col) on the patch grid; text tokens get zeros;
* the output tokens are folded back to (B, C, H, W).

FLUX.1-dev is guidance distilled: the guidance scale is an embedded scalar input (`guidance`, (B,)), passed
as the raw scale (e.g. 3.5), exactly as FluxPipeline does. It has no true CFG. `student_copy()` returns a
copy without the guidance embedder (docs/ALGORITHM.md, Roles): the generator and the fake score take no
guidance input.
"""

from __future__ import annotations

import torch

from senseflow.models.base import Conditioning, Denoiser

Tensor = torch.Tensor

GUIDANCE_PREFIX = "time_text_embed.guidance_embedder."


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches, row-major over the patch grid."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX latents need even height and width, got {h}x{w}")
    patches = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of `pack_latents` for latents of spatial size (height, width)."""
    b, n, d = tokens.shape
    if n != (height // 2) * (width // 2) or d % 4:
        raise ValueError(f"cannot unpack {tuple(tokens.shape)} tokens to {height}x{width} latents")
    c = d // 4
    grid = tokens.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, height, width)


def image_position_ids(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(H/2 * W/2, 3) ids (0, row, col) of the packed patch grid of (height, width) latents."""
    rows = torch.arange(height // 2, device=device, dtype=dtype)
    cols = torch.arange(width // 2, device=device, dtype=dtype)
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


class FluxDenoiser(Denoiser):
    family = "flux"

    @property
    def has_guidance_input(self) -> bool:  # type: ignore[override]
        return bool(self.backbone.config.guidance_embeds)

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning, guidance: Tensor | None = None) -> Tensor:
        dtype = self.backbone.dtype
        b, _, h, w = x.shape
        if self.has_guidance_input:
            if guidance is None:
                raise ValueError("this FLUX model is guidance distilled: pass guidance=(B,) scales (e.g. 3.5)")
            guidance = torch.as_tensor(guidance, device=x.device, dtype=torch.float32)
            guidance = guidance.expand(b) if guidance.ndim == 0 else guidance
        elif guidance is not None:
            raise ValueError("this FLUX model has no guidance input (student copy or FLUX.1-schnell); pass guidance=None")
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        text = cond.prompt_embeds.to(dtype)
        out = self.backbone(
            hidden_states=pack_latents(x.to(dtype)),
            encoder_hidden_states=text,
            pooled_projections=cond.pooled.to(dtype),
            timestep=sigma.to(dtype),
            img_ids=image_position_ids(h, w, device=x.device, dtype=dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w).to(x.dtype)

    def student_copy(self) -> "FluxDenoiser":
        """A trainable copy with the teacher's weights and no guidance embedder.

        Builds a fresh FluxTransformer2DModel from the teacher's config with guidance_embeds=False (on the meta
        device, so no second random initialisation is paid for a 12B model) and loads every teacher weight
        except the guidance embedder's, cloned, on the teacher's device and dtype. Strict: any other key
        mismatch raises.
        """
        src = self.backbone
        if not src.config.guidance_embeds:
            return super().student_copy()
        config = dict(src.config)
        config["guidance_embeds"] = False
        with torch.device("meta"):
            student = type(src).from_config(config)
        state = {k: v.detach().clone() for k, v in src.state_dict().items() if not k.startswith(GUIDANCE_PREFIX)}
        student.load_state_dict(state, strict=True, assign=True)
        leftover = [n for n, t in list(student.named_parameters()) + list(student.named_buffers()) if t.is_meta]
        if leftover:
            raise RuntimeError(f"student copy left tensors uninitialised: {leftover[:5]}")
        student.train(src.training)
        student.requires_grad_(True)
        clone = type(self)(student)
        return clone
