"""The digits world's prompts (no torch here: the cache check of `senseflow world digits build` reads them).

Training templates and held-out templates (different wordings, used only for evaluation), each written with
the digit as a word ("seven") or a numeral ("7").
"""

from __future__ import annotations

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {w}: the digit as a word, {n}: as a numeral.
TRAIN_TEMPLATES = (
    "a handwritten {w}",
    "the digit {n}",
    "a drawing of the number {w}",
    "the number {n}",
    "digit {w}",
    "a hand-drawn {n}",
    "an image of the digit {w}",
    "{n}",
    "the numeral {w}",
    "a picture of a {n}",
    "{w}",
    "handwriting of the number {n}",
)
HELD_OUT_TEMPLATES = (
    "a sketch of the digit {w}",
    "the number {w}, written by hand",
    "a handwritten {n}",
    "someone wrote a {w}",
    "a photo of the numeral {n}",
)
UNCONDITIONAL_PROMPT = ""


def prompt_for(template: str, digit: int) -> str:
    return template.format(w=DIGIT_WORDS[digit], n=digit)


def train_prompts(digit: int) -> list[str]:
    return [prompt_for(t, digit) for t in TRAIN_TEMPLATES]


def held_out_prompts(digit: int) -> list[str]:
    return [prompt_for(t, digit) for t in HELD_OUT_TEMPLATES]


def all_prompts() -> list[str]:
    """Every prompt the world uses, the unconditional "" first (the finite set the text cache holds)."""
    out = [UNCONDITIONAL_PROMPT]
    for d in range(10):
        out += train_prompts(d) + held_out_prompts(d)
    return out


def held_out_prompt_cycle() -> tuple[list[str], list[int]]:
    """The held-out prompts in evaluation order: template-major, digit-minor, so any prefix of a cycle of
    length 10 k is balanced over digits. Returns (prompts, labels)."""
    prompts, labels = [], []
    for t in HELD_OUT_TEMPLATES:
        for d in range(10):
            prompts.append(prompt_for(t, d))
            labels.append(d)
    return prompts, labels
