"""Data and prompts of the digits world.

Images: scikit-learn's bundled handwritten digits (1797 images, 8x8, values 0..16), as float32 tensors
(N, 1, 8, 8) in [-1, 1]. A fixed, stratified train / held-out split (seeded).
Prompts: see senseflow.worlds.digits.prompts (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# the prompts live in a torch-free module (senseflow.worlds.digits.prompts); re-exported here
from senseflow.worlds.digits.prompts import (DIGIT_WORDS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES,  # noqa: F401
                                             UNCONDITIONAL_PROMPT, all_prompts, held_out_prompt_cycle,
                                             held_out_prompts, prompt_for, train_prompts)

Tensor = torch.Tensor

IMAGE_SHAPE = (1, 8, 8)


def load_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits: images (N, 1, 8, 8) float32 in [-1, 1] and labels (N,) int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # 0..16 -> -1..1
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def stratified_split(labels: Tensor, held_out_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, held_out): round(fraction * n_d) of each digit d held out, chosen by a seeded shuffle."""
    rng = torch.Generator().manual_seed(seed)
    train, held = [], []
    for d in range(10):
        idx = torch.nonzero(labels == d).flatten()
        idx = idx[torch.randperm(len(idx), generator=rng)]
        k = round(held_out_fraction * len(idx))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


@dataclass
class DigitsBatch:
    """images (B, 1, 8, 8) in [-1, 1]; prompts: B strings; labels (B,) int64."""

    images: Tensor
    prompts: list[str]
    labels: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DigitsSplit:
    """One split: images (N, 1, 8, 8) in [-1, 1], labels (N,), and one fixed prompt per image (the split's
    templates taken in turn, so each image's prompt is reproducible)."""

    images: Tensor
    labels: Tensor
    prompts: list[str]
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch_size: int, rng: torch.Generator) -> DigitsBatch:
        """A random batch (with replacement) of (image, prompt, label), each prompt a random template of the
        split for that image's digit. Everything random comes from `rng`."""
        idx = torch.randint(len(self), (batch_size,), generator=rng)
        tpl = torch.randint(len(self.templates), (batch_size,), generator=rng)
        labels = self.labels[idx]
        prompts = [prompt_for(self.templates[t], int(d)) for t, d in zip(tpl.tolist(), labels.tolist())]
        return DigitsBatch(self.images[idx], prompts, labels)


@dataclass
class DigitsData:
    train: DigitsSplit
    held_out: DigitsSplit

    @classmethod
    def load(cls, held_out_fraction: float, split_seed: int) -> "DigitsData":
        images, labels = load_images()
        tr, ho = stratified_split(labels, held_out_fraction, split_seed)

        def split(idx: Tensor, templates: tuple[str, ...]) -> DigitsSplit:
            lab = labels[idx]
            prompts = [prompt_for(templates[i % len(templates)], int(d)) for i, d in enumerate(lab.tolist())]
            return DigitsSplit(images[idx].contiguous(), lab, prompts, templates)

        return cls(split(tr, TRAIN_TEMPLATES), split(ho, HELD_OUT_TEMPLATES))
