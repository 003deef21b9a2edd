"""The digits world: the embedded default that runs the whole method on a CPU (docs/ARCHITECTURE.md, "The digits
world").

scikit-learn's 8x8 handwritten digits in [-1, 1], prompts such as "a handwritten seven", the offline MiniLM
as a frozen text encoder, a small SD3-architecture teacher trained here by rectified flow (pixel space), a
CNN digit classifier for evaluation only, and a tiny DINOv2 backbone for the discriminator. Everything is
built once and cached by config hash; see `world.py` for the cache layout.

    world = build_world()                      # trains what is missing, loads what is cached
    batch = world.sample_batch(64, torch.Generator().manual_seed(0))
    x = world.sample_teacher(world.reference.prompts[:16], world.reference.noise[:16])
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names below resolve on first use
    from senseflow.worlds.digits.classifier import DigitClassifier
    from senseflow.worlds.digits.config import DigitsWorldConfig
    from senseflow.worlds.digits.data import DigitsBatch, DigitsData, DigitsSplit
    from senseflow.worlds.digits.prompts import (DIGIT_WORDS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, all_prompts,
                                                 held_out_prompts, train_prompts)
    from senseflow.worlds.digits.teacher import euler_sigmas, sample_euler_cfg
    from senseflow.worlds.digits.text import DigitsTextEncoder
    from senseflow.worlds.digits.world import (DigitsWorld, ReferenceSet, build_teacher, build_world,
                                               save_sample_grids)

# Names resolve lazily (module __getattr__): importing the package, or its torch-free modules (config, prompts,
# cache), does not import torch, so `senseflow world digits build` on a cached world answers without it.
_LAZY = {
    "DigitClassifier": "classifier",
    "DigitsWorldConfig": "config",
    "DIGIT_WORDS": "prompts", "HELD_OUT_TEMPLATES": "prompts", "TRAIN_TEMPLATES": "prompts", "all_prompts": "prompts",
    "held_out_prompts": "prompts", "train_prompts": "prompts",
    "DigitsBatch": "data", "DigitsData": "data", "DigitsSplit": "data",
    "euler_sigmas": "teacher", "sample_euler_cfg": "teacher",
    "DigitsTextEncoder": "text",
    "DigitsWorld": "world", "ReferenceSet": "world", "build_teacher": "world", "build_world": "world",
    "save_sample_grids": "world",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
