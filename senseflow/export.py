"""Export a distilled student in diffusers layout.

The student's backbone goes to `transformer/` (SD3/SD3.5, FLUX, digits) or `unet/` (SDXL), loadable with
`SD3Transformer2DModel.from_pretrained(out/"transformer")` etc. and usable in the family's diffusers
pipeline in place of the teacher's. `senseflow.json` records the anchors (sigmas and table indices)
and sampler the student was trained for; a FLUX student has no guidance embedder.
"""

from __future__ import annotations

import json
from pathlib import Path

from senseflow.config import RunConfig
from senseflow.models.base import Denoiser


def export_student(student: Denoiser, out_dir: str | Path, cfg: RunConfig) -> Path:
    out = Path(out_dir)
    sub = "unet" if cfg.model.family == "sdxl" else "transformer"
    (out / sub).mkdir(parents=True, exist_ok=True)
    student.backbone.save_pretrained(out / sub, safe_serialization=True)
    info = {"family": cfg.model.family, "teacher": cfg.model.teacher, "method": cfg.method, "name": cfg.name,
            "anchor_indices": cfg.generator.anchor_indices, "table_shift": cfg.model.table_shift,
            "sampler": cfg.generator.sampler, "subfolder": sub}
    (out / "senseflow.json").write_text(json.dumps(info, indent=1))
    return out
