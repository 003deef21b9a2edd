"""The digits world: the embedded default that runs the whole method on a CPU (issue 3).

scikit-learn's 8x8 handwritten digits in [-1, 1], prompts such as "a handwritten seven", the offline MiniLM
as a frozen text encoder, a small SD3-architecture teacher trained here by rectified flow (pixel space), a
CNN digit classifier for evaluation only, and a tiny DINOv2 backbone for the discriminator. Everything is
built once and cached by config hash; see `world.py` for the cache layout.

    world = build_world()                      # trains what is missing, loads what is cached
    batch = world.sample_batch(64, torch.Generator().manual_seed(0))
    x = world.sample_teacher(world.reference.prompts[:16], world.reference.noise[:16])
"""

from senseflow.worlds.digits.classifier import DigitClassifier
from senseflow.worlds.digits.config import DigitsWorldConfig
from senseflow.worlds.digits.data import (DIGIT_WORDS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, DigitsBatch, DigitsData,
                                          DigitsSplit, all_prompts, held_out_prompts, train_prompts)
from senseflow.worlds.digits.teacher import euler_sigmas, sample_euler_cfg
from senseflow.worlds.digits.text import DigitsTextEncoder
from senseflow.worlds.digits.world import DigitsWorld, ReferenceSet, build_teacher, build_world, save_sample_grids

__all__ = [
    "DIGIT_WORDS", "HELD_OUT_TEMPLATES", "TRAIN_TEMPLATES", "DigitClassifier", "DigitsBatch", "DigitsData",
    "DigitsSplit", "DigitsTextEncoder", "DigitsWorld", "DigitsWorldConfig", "ReferenceSet", "all_prompts",
    "build_teacher", "build_world", "euler_sigmas", "held_out_prompts", "sample_euler_cfg", "save_sample_grids",
    "train_prompts",
]
