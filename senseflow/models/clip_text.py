"""The VFM discriminator's own text embedding: CLIP's projected text embedding of each prompt.

The authors condition every discriminator head on a 768-d CLIP text embedding that is separate from the
teacher's text encoders (their loader is not released; CLIP ViT-L/14's text tower, `openai/clip-vit-large-patch14`,
has that width and is the default of `gan.text_encoder`). `CLIPTextEmbedder.encode(prompts)` returns the
tower's `text_embeds` (the projection of the end-of-text token's state, not normalised), as CLIP's
`encode_text` does.

Loading follows the project's offline rule (senseflow.models.loading): a hub id is resolved in the local
Hugging Face cache only, a local directory is used as it is, the tokenizer comes from that resolved folder,
and anything missing raises one ModelNotAvailableError naming the model and the fix.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from senseflow.models.loading import ModelNotAvailableError, local_or_cached_or_raise

Tensor = torch.Tensor

DEFAULT_CLIP_TEXT = "openai/clip-vit-large-patch14"


class CLIPTextEmbedder(nn.Module):
    """A frozen CLIPTextModelWithProjection and its tokenizer: prompts -> (B, projection_dim) text_embeds."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 77):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = min(int(max_length), int(getattr(tokenizer, "model_max_length", max_length)))

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def train(self, mode: bool = True) -> "CLIPTextEmbedder":
        return super().train(False)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        device = next(self.model.parameters()).device
        return self.model(ids.to(device)).text_embeds.float()


def load_clip_text(source: str | os.PathLike = DEFAULT_CLIP_TEXT, dtype: torch.dtype | None = None) -> CLIPTextEmbedder:
    """The CLIP text tower (with projection) and tokenizer from a local directory or a cached hub id (never
    downloads). Raises ModelNotAvailableError naming the model and how to get it."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    text = os.fspath(source)
    hint = (f"download it while online (`hf download {text}`) and copy the Hugging Face cache here, or set "
            "gan.text_encoder to a local directory holding a CLIPTextModelWithProjection and its tokenizer; "
            "gan.text_condition=pooled_per_head or pooled_shared needs no CLIP")
    folder = local_or_cached_or_raise(text, f"CLIP text encoder {text!r} for the discriminator's text condition",
                                      hint)
    try:
        kwargs = {} if dtype is None else {"dtype": dtype}
        model = CLIPTextModelWithProjection.from_pretrained(str(folder), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ModelNotAvailableError(f"cannot load the CLIP text encoder {text!r} from {str(folder)!r}: "
                                     f"{type(err).__name__}: {err}; {hint}") from err
    from senseflow.models.loading import _MIN_VOCAB, _ordinary_vocab_size

    if _ordinary_vocab_size(tokenizer) < _MIN_VOCAB:
        raise ModelNotAvailableError(f"the CLIP tokenizer in {str(folder)!r} is empty (its vocabulary files are "
                                     f"missing or unreadable); {hint}")
    return CLIPTextEmbedder(model, tokenizer)


def tiny_clip_text(seed: int = 0, hidden: int = 32, projection: int = 24) -> CLIPTextEmbedder:
    """A random-init tiny CLIP text tower of the same architecture (with projection) and an in-memory
    tokenizer, for tests and smoke runs (deterministic in seed; the global RNG is untouched)."""
    from senseflow.models.tiny import tiny_clip_text_model

    model, tokenizer = tiny_clip_text_model(seed, hidden, projection)
    return CLIPTextEmbedder(model, tokenizer)
