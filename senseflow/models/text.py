"""Frozen text encoders per family, producing exactly what each diffusers pipeline's `encode_prompt` produces.

* SD3 / SD3.5: CLIP-L and CLIP-G (both with projection) and optionally T5-XXL. The penultimate hidden
  states of the two CLIPs are concatenated on the feature axis (768 + 1280), zero-padded (or cropped) to
  the T5 width (4096), and put in front of the T5 states on the sequence axis: (B, 77 + L_t5, 4096).
  Pooled = [CLIP-L text_embeds, CLIP-G text_embeds] (B, 2048). Without T5 the T5 part is zeros of
  (B, L_t5, joint_attention_dim), as the pipeline does.
* FLUX.1: pooled = CLIP-L's pooler output (B, 768); states = T5's last hidden state (B, L_t5, 4096).
* SDXL: penultimate states of CLIP-L (CLIPTextModel) and CLIP-G (with projection) concatenated
  (B, 77, 2048); pooled = CLIP-G text_embeds (B, 1280); extra["time_ids"] = (H, W, 0, 0, H, W) of the
  target resolution, the pipeline's default micro-conditioning.

Unconditional branch: `encode([""])`, the pipelines' default negative prompt, except SDXL with
`force_zeros_for_empty_prompt` (SDXL base's setting), where the pipeline uses all-zero states and pooled
vector for the negative branch: there, every "" prompt encodes to zeros (time_ids unchanged).

Component attributes are named as in the pipelines (text_encoder, tokenizer, text_encoder_2, ...), so a
pipeline can be assembled from an encoder (see loading.pipeline_from_bundle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from senseflow.models.base import Conditioning, TextEncoder

Tensor = torch.Tensor


def _token_ids(tokenizer, prompts: list[str], max_length: int) -> Tensor:
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class FrozenTextEncoder(TextEncoder):
    """Common behaviour: no gradients, always in eval mode, encode under no_grad."""

    component_names: tuple[str, ...] = ()

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return _module_device(self)

    def components(self) -> dict:
        """The pipeline components held here, under the pipeline's argument names."""
        return {name: getattr(self, name) for name in self.component_names}

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        return prompts


class SD3TextEncoder(FrozenTextEncoder):
    component_names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3=None, tokenizer_3=None, *,
                 max_sequence_length: int = 256, joint_attention_dim: int | None = None):
        super().__init__()
        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise ValueError("pass both text_encoder_3 and tokenizer_3 (T5), or neither")
        if text_encoder_3 is None and joint_attention_dim is None:
            raise ValueError("without T5, joint_attention_dim (the transformer's text width) is needed for the zeros")
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.text_encoder_3, self.tokenizer_3 = text_encoder_3, tokenizer_3
        self.max_sequence_length = max_sequence_length
        self.joint_attention_dim = joint_attention_dim
        self._freeze()

    def _clip(self, model, tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
        # The pipeline pads both CLIPs to the first tokenizer's model_max_length.
        ids = _token_ids(tokenizer, prompts, self.tokenizer.model_max_length)
        out = model(ids.to(_module_device(model)), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts = self._check_prompts(prompts)
        h1, p1 = self._clip(self.text_encoder, self.tokenizer, prompts)
        h2, p2 = self._clip(self.text_encoder_2, self.tokenizer_2, prompts)
        clip = torch.cat([h1, h2.to(h1.dtype)], dim=-1)
        if self.text_encoder_3 is not None:
            ids = _token_ids(self.tokenizer_3, prompts, self.max_sequence_length)
            t5 = self.text_encoder_3(ids.to(_module_device(self.text_encoder_3)))[0]
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, self.joint_attention_dim,
                             device=clip.device, dtype=clip.dtype)
        # zero-pad the CLIP features to the T5 width (crop if wider, as F.pad with a negative pad does)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        states = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
        pooled = torch.cat([p1, p2.to(p1.dtype)], dim=-1)
        return Conditioning(states, pooled)


class FluxTextEncoder(FrozenTextEncoder):
    component_names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, *, max_sequence_length: int = 512):
        super().__init__()
        if max_sequence_length > 512:
            raise ValueError(f"FLUX's max_sequence_length is at most 512, got {max_sequence_length}")
        self.text_encoder, self.tokenizer = text_encoder, tokenizer          # CLIP-L (CLIPTextModel)
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2  # T5 encoder
        self.max_sequence_length = max_sequence_length
        self._freeze()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts = self._check_prompts(prompts)
        ids = _token_ids(self.tokenizer, prompts, self.tokenizer.model_max_length)
        pooled = self.text_encoder(ids.to(_module_device(self.text_encoder))).pooler_output
        ids = _token_ids(self.tokenizer_2, prompts, self.max_sequence_length)
        states = self.text_encoder_2(ids.to(_module_device(self.text_encoder_2)))[0]
        return Conditioning(states, pooled.to(states.device))


class SDXLTextEncoder(FrozenTextEncoder):
    component_names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, *, resolution: int | tuple[int, int],
                 force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        self.text_encoder, self.tokenizer = text_encoder, tokenizer          # CLIP-L (CLIPTextModel)
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2  # CLIP-G (with projection)
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.resolution = (int(h), int(w))
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self._freeze()

    def time_ids(self, batch: int) -> Tensor:
        """(original_size, crop top-left, target_size) = (H, W, 0, 0, H, W) per sample."""
        h, w = self.resolution
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(batch, 1)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        prompts = self._check_prompts(prompts)
        states, pooled = [], None
        for model, tokenizer in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)):
            ids = _token_ids(tokenizer, prompts, tokenizer.model_max_length)
            out = model(ids.to(_module_device(model)), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out.text_embeds if hasattr(out, "text_embeds") else pooled
        if pooled is None:
            raise TypeError("SDXL's text_encoder_2 must be a CLIPTextModelWithProjection (pooled text_embeds)")
        dev = states[-1].device
        prompt_embeds = torch.cat([s.to(dev, states[-1].dtype) for s in states], dim=-1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=dev)
            prompt_embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(prompt_embeds), prompt_embeds)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        time_ids = self.time_ids(len(prompts)).to(device=dev, dtype=prompt_embeds.dtype)
        return Conditioning(prompt_embeds, pooled, {"time_ids": time_ids})
