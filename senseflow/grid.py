"""Experiment grids: one YAML file -> validated `RunSpec`s, one per (cell, seed).

A grid file (see experiments/digits/ablation.yaml for a worked example)::

    grid: digits-ablation          # output.grid: runs land in results/runs/<grid>/<run_id>/
    description: free text
    base: digits-senseflow         # preset name, YAML path (relative to this file) or inline mapping
    overrides:                     # every cell; a mapping (nested or dotted keys) or a list of "key=value"
      train.iterations: 600
    eval: {num_samples: 1000}      # shorthand for overrides under `eval.`
    seeds: [0, 1]                  # train.seed; one run per seed and cell
    axes:                          # cartesian product of values
      ida.enabled: [false, true]
    variants:                      # explicit named cells (optional `base`, `overrides`, `seeds`)
      - {name: "w/o ISG", overrides: {isg.enabled: false}}
    db: results/senseflow.duckdb   # optional: the store `grid run` syncs (default <results>/senseflow.duckdb)
    allow_outside_results: false   # true: let output.root put the runs outside ./results (e.g. scratch space)
    compare_to: SenseFlow          # optional: tables add paired differences (same seeds) to this cell
    paper:                         # optional: the paper's values of one metric for some cells (plotted beside)
      metric: fid_t
      source: SD3.5 Large, component ablation
      values: {SenseFlow: 13.38, "w/o ISG": 17.00}

With both `variants` and `axes` every variant is crossed with every axis point; the cell is named
"<variant> (<key>=<value>, ...)" ("<key>=<value>, ..." with axes only). A cell's config is
built in this order (later wins): base (the variant's own `base` if it names one) -> grid
`overrides` -> `eval` -> variant `overrides` -> axis values -> seed. The cell's name becomes the run's
`name` (the label in ablation tables); seeds of the same cell share it.

`load_grid` validates the whole file before anything runs: the first problem raises one
`ConfigError` line that names the file, the cell and the key (the key's message comes from
senseflow.config). A run's id is `RunConfig.identity_hash()` (resolved config incl. name and seed,
output location excluded), so re-running a grid finds its earlier runs.
"""

from __future__ import annotations

import copy
import difflib
import fcntl
import itertools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals.store import GRID_MANIFEST
from senseflow import config as config_mod
from senseflow.config import ConfigError, RunConfig
from senseflow.run_folder import State, read_status, run_path, write_json_atomic

TOP_LEVEL_KEYS = ("grid", "description", "base", "overrides", "eval", "seeds", "axes", "variants", "db",
                  "allow_outside_results", "compare_to", "paper")
PAPER_KEYS = ("metric", "source", "values")
RESULTS_DIR = Path("results")  # the results root, relative to the current folder (default output.root: results/runs)
VARIANT_KEYS = ("name", "base", "overrides", "seeds", "description")
RUN_LOCK = ".run.lock"     # held (flock) by the process executing a run; see run_lock()

Override = tuple[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: a cell (variant and axis point) at one seed."""

    index: int
    name: str                              # the cell's name == cfg.name (seeds share it)
    seed: int
    cfg: RunConfig
    base: str                              # what the cell started from (preset name, file or 'inline')
    overrides: tuple[Override, ...]        # the cell's own overrides (variant + axes), in order
    axes: tuple[Override, ...] = ()        # the axis point of this cell

    @property
    def run_id(self) -> str:
        return self.cfg.identity_hash()

    @property
    def run_dir(self) -> Path:
        return run_path(self.cfg.output.root, self.cfg.output.grid, self.run_id)

    @property
    def label(self) -> str:
        return f"{self.name} (seed {self.seed})"


@dataclass
class Grid:
    name: str
    path: Path | None
    description: str
    common: list[Override]                 # grid-level overrides (incl. eval), shown once in plans
    specs: list[RunSpec] = field(default_factory=list)
    db: str | None = None                  # optional DuckDB path named by the file
    compare_to: str | None = None          # paired differences are taken against this cell
    paper: dict[str, Any] | None = None    # {metric, source, values: {cell: value}}

    @property
    def cells(self) -> list[str]:
        """Cell names in the file's order."""
        return list(dict.fromkeys(s.name for s in self.specs))

    def manifest(self) -> dict[str, Any]:
        """What tables and plots need to show the grid as its file orders it (written to GRID_MANIFEST)."""
        return {"grid": self.name, "file": str(self.path) if self.path else None, "cells": self.cells,
                "compare_to": self.compare_to, "paper": self.paper, "run_ids": [s.run_id for s in self.specs]}

    @property
    def root(self) -> Path:
        return Path(self.specs[0].cfg.output.root) if self.specs else Path("results/runs")

    def select(self, patterns: list[str] | None, seeds: list[int] | None = None) -> list[RunSpec]:
        """Specs whose cell name matches any shell-style pattern (all when none given) and, when `seeds` is
        given, whose seed is one of them."""
        import fnmatch

        chosen = list(self.specs)
        if patterns:
            chosen = [s for s in chosen if any(fnmatch.fnmatchcase(s.name, p) or p == s.run_id for p in patterns)]
            if not chosen:
                names = sorted({s.name for s in self.specs})
                raise ConfigError(f"--only {patterns!r} matches no cell of grid '{self.name}' (cells: {', '.join(names)})")
        if seeds:
            known = sorted({s.seed for s in chosen})
            bad = [x for x in seeds if x not in known]
            if bad:
                raise ConfigError(f"--seeds {bad[0]} is not a seed of grid '{self.name}'"
                                  f"{' in the cells chosen' if patterns else ''} (seeds: {', '.join(map(str, known))})")
            chosen = [s for s in chosen if s.seed in seeds]
        return chosen


# ============================================================================ overrides
def fmt_value(v: Any) -> str:
    """A value as it would be typed on the command line (YAML flow style)."""
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def fmt_overrides(pairs: list[Override] | tuple[Override, ...]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in pairs)


def override_pairs(obj: Any, where: str) -> list[Override]:
    """Normalise overrides (a list of 'key=value' strings, or a nested / dotted mapping) to (dotted key, value)."""
    if obj is None:
        return []
    if isinstance(obj, list):
        out: list[Override] = []
        for item in obj:
            if isinstance(item, str):
                path, value = config_mod.parse_override(item)
                out.append((".".join(path), value))
            elif isinstance(item, dict):
                out.extend(override_pairs(item, where))
            else:
                raise ConfigError(f"{where}: override {item!r} must be 'key.path=value' or a mapping")
        return out
    if isinstance(obj, dict):
        out = []

        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
                    raise ConfigError(f"{where}: override key {k!r} must be a dotted config key such as ida.lam")
                key = f"{prefix}{k}"
                if isinstance(v, dict) and v:
                    walk(v, key + ".")
                else:
                    out.append((key, v))

        walk(obj, "")
        return out
    raise ConfigError(f"{where}: overrides must be a mapping or a list of 'key=value', got {type(obj).__name__}")


def apply_pairs(data: dict[str, Any], pairs: list[Override]) -> dict[str, Any]:
    """Set each dotted key; an unknown key raises ConfigError with a did-you-mean (senseflow.config's message)."""
    out = copy.deepcopy(data)
    for key, value in pairs:
        config_mod.set_dotted(out, key.split("."), value)
    return out


def base_dict(base: Any, grid_dir: Path | None) -> tuple[dict[str, Any], str]:
    """(config dict, label) for a base: preset name, YAML file (relative to the grid file or cwd) or mapping."""
    if base is None:
        return {}, "defaults"
    if isinstance(base, dict):
        data, label = copy.deepcopy(base), "inline"
    elif isinstance(base, str):
        if base in config_mod.PRESETS:
            return config_mod.preset(base), base
        candidates = [grid_dir / base] if grid_dir is not None else []
        candidates.append(Path(base))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            config_mod.preset(base)  # raises with a did-you-mean over the presets
        data, label = config_mod.load_yaml(found), str(base)
    else:
        raise ConfigError(f"base={base!r} must be a preset name, a YAML path or a mapping")
    name = data.get("preset")
    if name:
        if not isinstance(name, str):
            raise ConfigError(f"preset={name!r} must be a preset name")
        data = config_mod._merge(config_mod.preset(name), data)
        label = name if label == "inline" else label
    config_mod._check_keys(data)
    return data, label


# ============================================================================ loading
def _did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"


def _seeds(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or any(not isinstance(s, int) or isinstance(s, bool) for s in value)):
        raise ConfigError(f"{where}: seeds={value!r} must be a non-empty list of integers, e.g. [0, 1]")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: seeds={value!r} repeats a seed")
    return list(value)


def load_grid(source: str | Path | dict[str, Any], *, name: str | None = None) -> Grid:
    """Read, validate and expand a grid (file path or mapping). Raises ConfigError naming the cell and key."""
    if isinstance(source, dict):
        doc, path, where = copy.deepcopy(source), None, "grid"
    else:
        path = Path(source)
        doc, where = config_mod.load_yaml(path, what="grid file"), str(source)
    grid_dir = path.parent if path is not None else None

    for k in doc:
        if k not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: unknown top-level key '{k}'{_did_you_mean(k, TOP_LEVEL_KEYS)}")
    if name is None and "grid" in doc and (not isinstance(doc["grid"], str) or not doc["grid"].strip()):
        raise ConfigError(f"{where}: grid={doc['grid']!r} must be a plain folder name such as digits-ablation "
                          "(or leave the key out to use the file's name)")
    outside_ok = doc.get("allow_outside_results", False)
    if not isinstance(outside_ok, bool):
        raise ConfigError(f"{where}: allow_outside_results={outside_ok!r} must be true or false")
    grid_name = name or doc.get("grid") or (path.stem if path is not None else "adhoc")
    if not isinstance(grid_name, str) or not grid_name or "/" in grid_name or grid_name.startswith("."):
        raise ConfigError(f"{where}: grid={grid_name!r} must be a plain folder name such as digits-ablation")
    description = doc.get("description") or ""
    db = doc.get("db")
    if db is not None and not isinstance(db, str):
        raise ConfigError(f"{where}: db={db!r} must be a path to a DuckDB file")

    common = override_pairs(doc.get("overrides"), f"{where}: overrides")
    ev = doc.get("eval")
    if ev is not None:
        if not isinstance(ev, dict):
            raise ConfigError(f"{where}: eval must be a mapping of eval.* keys, e.g. {{num_samples: 1000}}")
        common += [(f"eval.{k}", v) for k, v in override_pairs(ev, f"{where}: eval")]
    for key, _ in common:
        if key in ("name", "train.seed", "output.grid"):
            raise ConfigError(f"{where}: overrides may not set '{key}' (use variants/axes, seeds and grid)")
    seeds = _seeds(doc.get("seeds"), where)

    # axes: {dotted key: [values]}
    axes_doc = doc.get("axes") or {}
    if not isinstance(axes_doc, dict):
        raise ConfigError(f"{where}: axes must map a config key to a list of values, e.g. {{ida.enabled: [false, true]}}")
    axes: list[tuple[str, list[Any]]] = []
    for key, values in axes_doc.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axis '{key}' must be a non-empty list of values, got {values!r}")
        try:
            config_mod._check_keys(config_mod._nest(str(key).split("."), values[0]))
        except ConfigError as e:
            raise ConfigError(f"{where}: axis '{key}': {e}") from None
        if key in ("name", "train.seed", "output.grid"):
            raise ConfigError(f"{where}: axis '{key}' is not allowed (use variants and seeds)")
        axes.append((str(key), values))

    variants_doc = doc.get("variants")
    if variants_doc is None:
        variants_doc = [{"name": None}]
    if not isinstance(variants_doc, list) or not variants_doc:
        raise ConfigError(f"{where}: variants must be a non-empty list of {{name, overrides}} mappings")
    variants = []
    seen_names: set[str] = set()
    for i, v in enumerate(variants_doc):
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: variant #{i + 1} must be a mapping with a name, got {v!r}")
        vname = v.get("name")
        vwhere = f"{where}: variant '{vname}'" if vname else f"{where}: variant #{i + 1}"
        for k in v:
            if k not in VARIANT_KEYS:
                raise ConfigError(f"{vwhere}: unknown key '{k}'{_did_you_mean(k, VARIANT_KEYS)}")
        if doc.get("variants") is not None and (not isinstance(vname, str) or not vname.strip()):
            raise ConfigError(f"{vwhere}: every variant needs a non-empty `name` (its label in tables)")
        if vname in seen_names:
            raise ConfigError(f"{vwhere}: two variants are named '{vname}'; names must be unique")
        seen_names.add(vname)
        variants.append((vname, v, vwhere))

    base_cache: dict[str, tuple[dict, str]] = {}

    def get_base(b: Any, w: str) -> tuple[dict, str]:
        key = repr(b)
        if key not in base_cache:
            try:
                base_cache[key] = base_dict(b, grid_dir)
            except ConfigError as e:
                raise ConfigError(f"{w}: base: {e}") from None
        return base_cache[key]

    specs: list[RunSpec] = []
    names_seen: dict[str, str] = {}
    for vname, v, vwhere in variants:
        data0, label = get_base(v.get("base", doc.get("base")), vwhere)
        own = override_pairs(v.get("overrides"), f"{vwhere}: overrides")
        for key, _ in own:
            if key in ("name", "train.seed", "output.grid"):
                raise ConfigError(f"{vwhere}: overrides may not set '{key}' (use the variant's name and seeds)")
        vseeds = _seeds(v.get("seeds"), vwhere) or seeds
        for point in itertools.product(*[[(k, val) for val in vals] for k, vals in axes]) if axes else [()]:
            point = tuple(point)
            axis_label = ", ".join(f"{k}={fmt_value(val)}" for k, val in point)
            if vname and axis_label:
                cell = f"{vname} ({axis_label})"
            else:
                cell = vname or axis_label or grid_name
            if cell in names_seen:
                raise ConfigError(f"{where}: two cells are both named '{cell}'")
            names_seen[cell] = cell
            cwhere = f"{where}: cell '{cell}'"
            cell_pairs = own + list(point)
            for seed in (vseeds if vseeds is not None else [None]):
                try:
                    data = apply_pairs(data0, common)
                    data = apply_pairs(data, cell_pairs)
                    data = apply_pairs(data, [("name", cell), ("output.grid", grid_name)]
                                       + ([("train.seed", seed)] if seed is not None else []))
                    cfg = config_mod.build(data)
                except ConfigError as e:
                    at = f" (seed {seed})" if seed is not None and len(vseeds or []) > 1 else ""
                    raise ConfigError(f"{cwhere}{at}: {e}") from None
                specs.append(RunSpec(index=len(specs), name=cell, seed=cfg.train.seed, cfg=cfg, base=label,
                                     overrides=tuple(cell_pairs), axes=point))

    if not outside_ok:
        results = RESULTS_DIR.resolve()
        for s in specs:
            root = Path(s.cfg.output.root).expanduser().resolve()
            if root != results and results not in root.parents:
                raise ConfigError(f"{where}: cell '{s.name}': output.root={s.cfg.output.root!r} puts the runs outside "
                                  f"the results folder {results}; add `allow_outside_results: true` to the grid "
                                  "file to allow it")
    ids: dict[str, RunSpec] = {}
    for s in specs:
        if s.run_id in ids:
            raise ConfigError(f"{where}: cells '{ids[s.run_id].label}' and '{s.label}' resolve to the same run")
        ids[s.run_id] = s
    cells = list(dict.fromkeys(s.name for s in specs))
    compare_to = doc.get("compare_to")
    if compare_to is not None and compare_to not in cells:
        raise ConfigError(f"{where}: compare_to={compare_to!r} names no cell{_did_you_mean(str(compare_to), tuple(cells))}")
    paper = _paper(doc.get("paper"), cells, where)
    return Grid(name=grid_name, path=path, description=str(description), common=common, specs=specs, db=db,
                compare_to=compare_to, paper=paper)


def _paper(doc: Any, cells: list[str], where: str) -> dict[str, Any] | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: paper must be a mapping {{metric, source, values: {{cell: number}}}}")
    for k in doc:
        if k not in PAPER_KEYS:
            raise ConfigError(f"{where}: paper: unknown key '{k}'{_did_you_mean(k, PAPER_KEYS)}")
    metric, source, values = doc.get("metric"), doc.get("source", ""), doc.get("values")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: paper.metric={metric!r} must name a metric, e.g. fid_t")
    if not isinstance(source, str):
        raise ConfigError(f"{where}: paper.source={source!r} must be text (where the values are published)")
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{where}: paper.values must map cell names to numbers, e.g. {{SenseFlow: 13.38}}")
    for cell, v in values.items():
        if cell not in cells:
            raise ConfigError(f"{where}: paper.values: {cell!r} names no cell{_did_you_mean(str(cell), tuple(cells))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: paper.values.{cell}={v!r} must be a number")
    return {"metric": metric, "source": source, "values": {c: float(v) for c, v in values.items()}}


def write_manifest(grid: Grid) -> Path:
    """Write the grid's GRID_MANIFEST into its folder (atomically), for tables and plots to follow the file's order."""
    path = grid.root / grid.name / GRID_MANIFEST
    write_json_atomic(path, grid.manifest())
    return path


# ============================================================================ state of a run
@dataclass
class CellState:
    kind: str                 # new | done | partial | running | failed | diverged
    iteration: int = 0
    total: int = 0
    reason: str = ""
    raw: str = ""             # status.json's state

    def describe(self) -> str:
        if self.kind == "partial":
            return f"partial({self.iteration}/{self.total}, {self.raw})"
        if self.kind == "running":
            return f"running({self.iteration}/{self.total})"
        if self.kind in ("failed", "diverged"):
            return f"{self.kind}: {self.reason}" if self.reason else self.kind
        return self.kind


def is_locked(run_dir: Path, name: str = RUN_LOCK) -> bool:
    """True when another process holds the run's lock (i.e. it is executing right now, on this host); `name`
    picks another lock file in the folder (a sweep's trial locks)."""
    p = Path(run_dir) / name
    if not p.exists():
        return False
    try:
        fd = os.open(p, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class run_lock:
    """Exclusive flock on <run_dir>/.run.lock while a run executes: two grid runs or sweep workers never
    train the same run at once (the second waits, then finds it finished). Released when the process dies.
    `name` picks another lock file in the folder (a sweep's trial locks)."""

    def __init__(self, run_dir: Path, blocking: bool = True, name: str = RUN_LOCK):
        self.path = Path(run_dir) / name
        self.blocking = blocking
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except OSError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "run_lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def cell_state(spec: RunSpec | Path, total: int | None = None) -> CellState:
    run_dir = spec.run_dir if isinstance(spec, RunSpec) else Path(spec)
    total = total if total is not None else (spec.cfg.train.iterations if isinstance(spec, RunSpec) else 0)
    status = read_status(run_dir)
    state = status.get("state")
    it = int(status.get("iteration") or 0)
    if is_locked(run_dir):
        return CellState("running", it, total, raw=state or "")
    if not status:
        return CellState("new", 0, total)
    if state == State.COMPLETED:
        return CellState("done", it, total, raw=state)
    if state in (State.FAILED, State.DIVERGED):
        return CellState(state, it, total, reason=str(status.get("reason") or ""), raw=state)
    if state in (State.RUNNING, State.EVALUATING):
        # nobody here holds its lock: interrupted, or running on another host (e.g. a SLURM node)
        host = status.get("host")
        state = "interrupted" if not host or host == socket.gethostname() else f"{state} on {host}?"
    return CellState("partial", it, total, raw=str(state))
