"""SD3 / SD3.5 (diffusers SD3Transformer2DModel) as a `Denoiser`.

The transformer predicts the flow velocity in our convention directly; it takes timestep = sigma * 1000,
joint text states (B, L, joint_attention_dim) and a pooled vector (B, pooled_projection_dim).
"""

from __future__ import annotations

import torch

from senseflow.models.base import Conditioning, Denoiser


class SD3Denoiser(Denoiser):
    family = "sd3"
    has_guidance_input = False

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.backbone.dtype
        out = self.backbone(
            hidden_states=x.to(dtype),
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            timestep=(sigma * 1000).to(dtype),
            return_dict=False,
        )[0]
        return out.to(x.dtype)
