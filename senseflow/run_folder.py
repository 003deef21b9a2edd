"""The run folder and its files: the one place that names them, writes them and says where a run lives.

    <output.root>/<grid>/<run_id>/          run_path(root, grid, run_id)
        config.yaml      the resolved config (senseflow.config.save)
        status.json      {"run_id", "grid", "variant", "seed", "method", "state", "reason", "iteration",
                          "started", "finished", "code_version", "host", ...}; state is a `State`, times
                          are Unix seconds
        metrics.jsonl    one JSON object per logged iteration (senseflow.train)
        eval.json        the evaluations (evals.store.record_eval)
        job.json         how the run was launched (senseflow.launch)
        checkpoints/iter_XXXXXXX/   senseflow.checkpoint
        samples/*.png    preview grids (`save_png`)

Every JSON file is written whole into a temp file in the same folder and renamed over the old one
(`write_json_atomic`), so a reader never sees half a file; read-modify-write of status.json (and of
eval.json) happens under the folder's lock (`lock`: a `filelock` on <run_dir>/.lock), so two writers
never lose each other's fields. Torch-free: the launcher, the grid, the sweep and the results store
read and write here without loading torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import subprocess
import uuid
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from senseflow.errors import UserError

STATUS_FILE, CONFIG_FILE, METRICS_FILE, EVAL_FILE, JOB_FILE = ("status.json", "config.yaml", "metrics.jsonl",
                                                               "eval.json", "job.json")
LOCK_FILE = ".lock"


class State(str, Enum):
    """A run's state in status.json (the value is the text written there)."""

    PENDING = "pending"          # folder created, nothing run yet
    RUNNING = "running"          # training
    STOPPED = "stopped"          # training paused at a checkpoint (stop_after, a cancel, a pruned trial)
    TRAINED = "trained"          # training done, evaluation not started
    EVALUATING = "evaluating"
    COMPLETED = "completed"      # trained and evaluated
    FAILED = "failed"
    DIVERGED = "diverged"

    def __str__(self) -> str:
        return self.value


TERMINAL = (State.COMPLETED, State.FAILED, State.DIVERGED)   # a tuple: `"completed" in TERMINAL` compares text


def run_path(root: str | os.PathLike, grid: str, run_id: str) -> Path:
    """``<root>/<grid>/<run_id>`` (not created): where every run lives. ``grid`` may hold '/' (nested grids
    like 'digits/ablation'); ``run_id`` must be one path component."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", "..") or run_id.startswith("."):
        raise UserError(f"run_id={run_id!r} must be one path component (no '/', not hidden); use the run's "
                        "config hash")
    parts = grid.split("/")
    if not grid or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise UserError(f"output.grid={grid!r} must be a relative name like 'ablation' or 'digits/ablation'; "
                        "rename the grid")
    return Path(root) / grid / run_id


# ============================================================================ files
def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)  # paths, dtypes, devices: their text


def dumps(obj: Any, **kw: Any) -> str:
    """JSON text of `obj`; numpy values, datetimes and sets become plain JSON, anything else its str()."""
    return json.dumps(obj, default=_json_default, **kw)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to a temp file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as JSON (see `dumps` for the values it converts)."""
    write_text_atomic(path, dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def lock(run_dir: str | os.PathLike) -> FileLock:
    """The run folder's lock (a context manager) for read-modify-write of its files."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(run_dir / LOCK_FILE))


def update_json(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the JSON object in ``path`` under its folder's lock; returns the result."""
    path = Path(path)
    with lock(path.parent):
        cur = read_json(path)
        cur.update(fields)
        write_json_atomic(path, cur)
    return cur


# ============================================================================ status.json
_CODE_VERSION: str | None = None


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree this module lives in, or 'unknown' (once per process)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        try:
            out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                                 capture_output=True, text=True, timeout=5)
            _CODE_VERSION = out.stdout.strip() or "unknown"
        except Exception:
            _CODE_VERSION = "unknown"
    return _CODE_VERSION


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's status.json as a dict; {} when there is none (or it cannot be read)."""
    return read_json(Path(run_dir) / STATUS_FILE)


def update_status(run_dir: str | os.PathLike, cfg=None, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (atomic, under the folder's lock) and return the new status.

    With ``cfg`` (a senseflow.config.RunConfig) the run's identity is written too: run_id (the folder's
    name), grid, variant, seed, method, code_version and host; ``fields`` win over it.
    A ``state`` field must be a `State` or its text."""
    if "state" in fields:
        fields["state"] = _state(fields["state"]).value
    run_dir = Path(run_dir)
    ident: dict[str, Any] = {}
    if cfg is not None:
        ident = {"run_id": run_dir.name, "grid": cfg.output.grid, "variant": cfg.name, "seed": cfg.train.seed,
                 "method": cfg.method, "code_version": code_version(), "host": socket.gethostname()}
    return update_json(run_dir / STATUS_FILE, **{**ident, **fields})


def write_status(run_dir: str | os.PathLike, state: State | str, cfg=None, **fields: Any) -> dict[str, Any]:
    """Set the run's state (and merge ``fields``, see `update_status`); returns the new status."""
    return update_status(run_dir, cfg, state=state, **fields)


def _state(value: State | str) -> State:
    try:
        return State(value)
    except ValueError:
        raise ValueError(f"state={value!r} is not one of {', '.join(s.value for s in State)}") from None


# ============================================================================ images
PREVIEW_SIDE = 256  # preview grids (samples/*.png) are enlarged until their longer side reaches this


def save_png(path: str | os.PathLike, image: np.ndarray, *, min_side: int = 0) -> None:
    """Save one uint8 image (H, W), (H, W, 1) or (H, W, 3) as PNG (written to a temp name, then renamed).

    min_side: enlarge by a whole factor (nearest neighbour) while the longer side stays below it (previews)."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a)
    scale = max(1, min_side // max(a.shape[:2]))
    if scale > 1:
        im = im.resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)
