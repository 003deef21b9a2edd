"""Every input file a run will read, present or missing, before anything is spent on it.

`check(cfg)` lists the teacher (each pipeline component it loads), the discriminator's DINOv2 backbone,
the metric weights of `eval.metrics`, the training data (`data.path`) and the evaluation prompts
(`eval.prompts`), each with the config key or environment variable that points to it. Nothing is
loaded or downloaded: hub ids are looked up in the local Hugging Face cache only. Runs that build
their own inputs (the digits world, `model.tiny`) need none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from senseflow.config import RunConfig

# metric name -> evals.weights.WEIGHTS entries it reads (FID-type metrics share the Inception network)
METRIC_WEIGHTS = {"fid": ("inception",), "kid": ("inception",), "fid_t": ("inception",), "patch_fid_t": ("inception",),
                  "clip_score": ("clip_score",), "hps": ("hps_v2.1",), "image_reward": ("image_reward",),
                  "pickscore": ("pickscore", "pickscore_processor")}


@dataclass(frozen=True)
class Input:
    what: str         # e.g. "teacher component text_encoder_3/"
    key: str          # config key or environment variable that points to it
    value: str        # what the key holds now ('' when unset)
    present: bool
    where: str        # the resolved location, or why it is missing

    def to_dict(self) -> dict:
        return {"what": self.what, "key": self.key, "value": self.value, "present": self.present, "where": self.where}

    def line(self) -> str:
        state = "present" if self.present else "MISSING"
        return f"{state:8s} {self.what}: {self.key}={self.value or '(unset)'} -> {self.where}"


def needs_inputs(cfg: RunConfig) -> bool:
    return cfg.model.family != "digits" and not cfg.model.tiny


def _hub_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of a hub repository, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, local_files_only=True))
    except Exception:  # not cached, invalid id, offline: all "not here"
        return None


def _local_or_hub(source: str) -> tuple[Path | None, str]:
    from senseflow.models.loading import _looks_like_path

    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        return (path, str(path)) if path.is_dir() else (None, f"no directory {str(path)!r}")
    snap = _hub_snapshot(source)
    return (snap, str(snap)) if snap else (None, "not in the Hugging Face cache (HF_HOME / HF_HUB_CACHE)")


def teacher_inputs(cfg: RunConfig) -> list[Input]:
    from senseflow.models.loading import _component_names

    family, source = cfg.model.family, cfg.model.teacher
    if not source:
        return [Input("teacher", "model.teacher", "", False, "no teacher configured")]
    root, where = _local_or_hub(source)
    with_t5 = cfg.model.with_t5 or family != "sd3"
    out = []
    for name in _component_names(family, with_t5):
        folder = root / name if root else None
        ok = folder is not None and folder.is_dir() and any(folder.iterdir())
        out.append(Input(f"teacher component {name}/", "model.teacher", source, ok,
                         str(folder) if ok else (f"no folder {str(folder)!r}" if root else where)))
    return out


def backbone_inputs(cfg: RunConfig) -> list[Input]:
    if cfg.gan.kind != "vfm":
        return []
    from senseflow.discriminators import TINY_BACKBONE

    if cfg.gan.backbone == TINY_BACKBONE:
        return []
    root, where = _local_or_hub(cfg.gan.backbone)
    ok = root is not None and (root / "config.json").is_file()
    return [Input("discriminator backbone (DINOv2)", "gan.backbone", cfg.gan.backbone, ok,
                  str(root) if ok else (where if root is None else f"no config.json in {str(root)!r}"))]


def metric_inputs(cfg: RunConfig) -> list[Input]:
    try:
        from evals import weights as M
    except ImportError:
        return []
    out, seen = [], set()
    for metric in cfg.eval.metrics:
        for wname in METRIC_WEIGHTS.get(metric, ()):
            if wname in seen or wname not in M.WEIGHTS:
                continue
            seen.add(wname)
            spec = M.WEIGHTS[wname]
            key = spec.config_key
            configured = cfg.eval.weights.get(key.rsplit(".", 1)[-1], "")
            try:
                where, ok = str(M.resolve_weights(spec, configured or None)), True
            except M.MissingWeightsError:
                where, ok = f"not found: get {spec.filename} from {spec.source}, or set ${spec.env_var}", False
            shown = key if configured else f"{key} or ${spec.env_var}"
            out.append(Input(f"metric weights {wname} ({metric})", shown, configured, ok, where))
    return out


def data_inputs(cfg: RunConfig) -> list[Input]:
    out = []
    p = Path(cfg.data.path).expanduser() if cfg.data.path else None
    ok = p is not None and p.exists()  # a folder of images + .txt captions, or a .jsonl file (senseflow.data)
    out.append(Input("training data", "data.path", cfg.data.path, ok,
                     str(p) if ok else ("not set" if p is None else f"{str(p)!r} does not exist")))
    if cfg.eval.prompts or cfg.model.family != "digits":
        q = Path(cfg.eval.prompts).expanduser() if cfg.eval.prompts else None
        ok = q is not None and q.is_file()
        out.append(Input("evaluation prompts (e.g. COCO-5K captions)", "eval.prompts", cfg.eval.prompts, ok,
                         str(q) if ok else ("not set" if q is None else f"{str(q)!r} does not exist")))
    return out


def check(cfg: RunConfig) -> list[Input]:
    """Every input file the run will read (empty for runs that build their own)."""
    if not needs_inputs(cfg):
        return []
    return teacher_inputs(cfg) + backbone_inputs(cfg) + metric_inputs(cfg) + data_inputs(cfg)


def check_many(cfgs) -> list[Input]:
    """The inputs of several runs, each listed once."""
    seen, out = set(), []
    for cfg in cfgs:
        for item in check(cfg):
            k = (item.what, item.key, item.value)
            if k not in seen:
                seen.add(k)
                out.append(item)
    return out


def render(items: list[Input]) -> list[str]:
    if not items:
        return ["inputs: none needed (the run builds its own)"]
    missing = sum(not i.present for i in items)
    head = f"inputs: {len(items)} needed, {missing} missing" if missing else f"inputs: all {len(items)} present"
    return [head] + [f"  {i.line()}" for i in items]


def missing_lines(items: list[Input]) -> list[str]:
    """One line per missing input, naming the key and the fix."""
    return [f"missing input: {i.what} ({i.key}={i.value or '(unset)'}): {i.where}" for i in items if not i.present]
