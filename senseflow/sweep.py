"""Optuna sweeps: a YAML search space over config keys; every trial is an ordinary run.

A sweep file (see experiments/sweeps/digits-ida-isg.yaml)::

    sweep: digits-ida-isg           # study name; runs go to results/runs/sweep-<name>/ (or `grid:`)
    base: digits-senseflow           # as in grid files: preset / YAML path / mapping
    overrides: {train.iterations: 400}
    eval: {num_samples: 500}
    seed: 0                          # train.seed of every trial
    params:                          # dotted config key -> distribution
      ida.lam:            {type: float, low: 0.9, high: 0.995}
      optim.ttur:         {type: int, low: 1, high: 10}
      optim.lr_generator: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      gan.kind:           {type: categorical, choices: [none, vfm]}
    objectives:                      # one (single-objective) or several (Pareto front)
      - {metric: fid_t, direction: minimize}
      - {metric: prompt_accuracy, direction: maximize}
    label: final                     # which eval.json evaluation holds the objective metrics
    trials: 16                       # default for --trials: the study's total (finished + running)
    sampler: {kind: tpe, seed: 0}    # tpe | random | nsga2
    pruner: {kind: median, startup_trials: 3, warmup_steps: 0}   # none | median | percentile | hyperband
    intermediate: {source: eval, metric: fid_t, every: 100}
    storage: results/sweeps/digits-ida-isg.db     # optional; see below

Objective values are read from the run's eval.json: the evaluation whose label is `label`, metric
`metric` ({"evaluations": [{"label": "final", "metrics": {...}}]}).

Pruning (single objective only: Optuna has no intermediate values for multi-objective studies): with
a pruner and `intermediate.every`, a trial trains in chunks of `every` iterations (execute(...,
stop_after=every); each chunk resumes from the checkpoint the previous one wrote, so set
train.checkpoint_every <= every or accept the redone iterations). After each chunk the newest
intermediate value is reported at its iteration:
  * source: eval    -> the newest eval.json evaluation other than `label`, metric `metric`; with the
                       real job (execute) every chunk's checkpoint is evaluated (label iter_<N>,
                       the run's eval settings: keep eval.num_samples small in pruned sweeps);
  * source: metrics -> the newest metrics.jsonl line that has `metric` (a training metric).
A pruned trial's run stays in its folder as 'stopped' with reason "pruned ...".

Storage: a SQLite file under results/sweeps/<name>.db by default; with --executor slurm a journal file
results/sweeps/<name>.journal (optuna JournalFileBackend, safe on shared filesystems); or any path
ending .db/.sqlite (SQLite), .journal/.log (journal) or a database URL.

Workers (`--workers N`): N processes (local) or SLURM jobs, each asking the shared study for trials
until the study holds `trials` trials. Asking is serialised by a lock file next to the storage, so
the count is exact. A worker holds its trial's lock (<storage>.trials/<number>.lock) from
the ask to the tell, so a worker killed mid-trial leaves a RUNNING trial with a free lock: the next
worker to start marks it FAIL and enqueues the same parameters again, which resumes the same run from
its last checkpoint. (The run's own lock, grid.run_lock, is freed before the tell, so it cannot tell a
dead worker's trial from one that has just finished.)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from evals.store import file_lock
from senseflow import config as config_mod
from senseflow.config import ConfigError, RunConfig
from senseflow.grid import apply_pairs, base_dict, fmt_value, is_locked, override_pairs, run_lock
from senseflow.run_folder import State, read_json, read_status, run_path, write_json_atomic, write_status

TOP_LEVEL_KEYS = ("sweep", "description", "base", "overrides", "eval", "seed", "params", "objectives", "objective",
                  "label", "trials", "sampler", "pruner", "intermediate", "storage", "grid", "db")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("none", "median", "percentile", "hyperband")


@dataclass
class Param:
    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, self.choices)

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class Objective:
    metric: str
    direction: str


@dataclass
class Sweep:
    name: str
    path: Path | None
    doc: dict[str, Any]                   # the file as read (workers rebuild the Sweep from it)
    base: dict[str, Any]
    common: list[tuple[str, Any]]
    seed: int | None
    params: list[Param]
    objectives: list[Objective]
    label: str
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    intermediate: dict[str, Any]
    storage: str | None
    grid: str
    db: str | None = None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def prunes(self) -> bool:
        return (len(self.objectives) == 1 and self.pruner.get("kind", "none") != "none"
                and int(self.intermediate.get("every") or 0) > 0)

    def config_for(self, values: dict[str, Any]) -> RunConfig:
        pairs = [(p.key, values[p.key]) for p in self.params if p.key in values]
        name = ", ".join(f"{p.key.split('.')[-1]}={_short(values[p.key])}" for p in self.params if p.key in values)
        data = apply_pairs(self.base, self.common)
        data = apply_pairs(data, pairs)
        extra = [("name", name or self.name), ("output.grid", self.grid)]
        if self.seed is not None:
            extra.append(("train.seed", self.seed))
        return config_mod.build(apply_pairs(data, extra))

    def run_dir(self, cfg: RunConfig) -> Path:
        return run_path(cfg.output.root, cfg.output.grid, cfg.identity_hash())

    @property
    def results_dir(self) -> Path:
        root = Path(config_mod.build(apply_pairs(self.base, self.common)).output.root)
        return root.parent / "sweeps"

    def storage_for(self, executor: str = "local") -> str:
        if self.storage:
            return self.storage
        ext = ".journal" if executor == "slurm" else ".db"
        return str(self.results_dir / f"{self.name}{ext}")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return fmt_value(v)


def _hint(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_sweep(source: str | Path | dict[str, Any]) -> Sweep:
    """Read and validate a sweep file; every parameter's bounds and choices are checked against the config."""
    if isinstance(source, dict):
        doc, path, where = copy.deepcopy(source), None, "sweep"
    else:
        path = Path(source)
        doc, where = config_mod.load_yaml(path, what="sweep file"), str(source)
    for k in doc:
        if k not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: unknown top-level key '{k}'{_hint(k, TOP_LEVEL_KEYS)}")
    if "sweep" in doc and (not isinstance(doc["sweep"], str) or not doc["sweep"].strip()):
        raise ConfigError(f"{where}: sweep={doc['sweep']!r} must be a plain name such as digits-lr "
                          "(or leave the key out to use the file's name)")
    name = doc.get("sweep") or (path.stem if path is not None else "sweep")
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: sweep={name!r} must be a plain name such as digits-lr")
    try:
        base, _ = base_dict(doc.get("base"), path.parent if path is not None else None)
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None
    common = override_pairs(doc.get("overrides"), f"{where}: overrides")
    if doc.get("eval") is not None:
        if not isinstance(doc["eval"], dict):
            raise ConfigError(f"{where}: eval must be a mapping of eval.* keys")
        common += [(f"eval.{k}", v) for k, v in override_pairs(doc["eval"], f"{where}: eval")]
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"{where}: seed={seed!r} must be an integer")

    params_doc = doc.get("params")
    if not isinstance(params_doc, dict) or not params_doc:
        raise ConfigError(f"{where}: params must map config keys to distributions, "
                          "e.g. {ida.lam: {type: float, low: 0.9, high: 0.99}}")
    params = []
    for key, spec in params_doc.items():
        pw = f"{where}: param '{key}'"
        if not isinstance(spec, dict):
            raise ConfigError(f"{pw}: must be a mapping such as {{type: float, low: 0.1, high: 1.0}}")
        allowed = ("type", "low", "high", "log", "step", "choices")
        for k in spec:
            if k not in allowed:
                raise ConfigError(f"{pw}: unknown key '{k}'{_hint(k, allowed)}")
        kind = spec.get("type", "categorical" if "choices" in spec else None)
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{pw}: type={kind!r} must be one of {', '.join(PARAM_TYPES)}")
        p = Param(str(key), kind, spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step"),
                  list(spec.get("choices") or []))
        if kind == "categorical":
            if not p.choices:
                raise ConfigError(f"{pw}: categorical needs a non-empty `choices` list")
        else:
            if not _number(p.low) or not _number(p.high) or p.low > p.high:
                raise ConfigError(f"{pw}: needs numeric low <= high, got low={p.low!r} high={p.high!r}")
            if kind == "int" and (p.low != int(p.low) or p.high != int(p.high)):
                raise ConfigError(f"{pw}: int bounds must be integers, got low={p.low!r} high={p.high!r}")
            if kind == "int":
                p.low, p.high = int(p.low), int(p.high)
            else:
                p.low, p.high = float(p.low), float(p.high)
            if p.log and p.low <= 0:
                raise ConfigError(f"{pw}: log=true needs low > 0, got {p.low}")
            if p.log and p.step is not None:
                raise ConfigError(f"{pw}: step and log=true cannot be combined")
        params.append(p)

    obj_doc = doc.get("objectives", doc.get("objective"))
    if isinstance(obj_doc, dict):
        obj_doc = [obj_doc]
    if not isinstance(obj_doc, list) or not obj_doc:
        raise ConfigError(f"{where}: objectives must be a list of {{metric: fid_t, direction: minimize}}")
    objectives = []
    for o in obj_doc:
        if not isinstance(o, dict) or not isinstance(o.get("metric"), str):
            raise ConfigError(f"{where}: objective {o!r} needs a metric name, e.g. {{metric: fid_t, direction: minimize}}")
        d = o.get("direction", "minimize")
        if d not in DIRECTIONS:
            raise ConfigError(f"{where}: objective '{o['metric']}': direction={d!r} must be minimize or maximize")
        for k in o:
            if k not in ("metric", "direction"):
                raise ConfigError(f"{where}: objective '{o['metric']}': unknown key '{k}'")
        objectives.append(Objective(o["metric"], d))

    def section(key: str, kinds: tuple[str, ...] | None, allowed: tuple[str, ...], default: dict) -> dict:
        v = doc.get(key, default)
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, e.g. {default}")
        for k in v:
            if k not in allowed:
                raise ConfigError(f"{where}: {key}: unknown key '{k}'{_hint(k, allowed)}")
        if kinds is not None and v.get("kind", default.get("kind")) not in kinds:
            raise ConfigError(f"{where}: {key}.kind={v.get('kind')!r} must be one of {', '.join(kinds)}")
        return {**default, **v}

    sampler = section("sampler", SAMPLERS, ("kind", "seed", "startup_trials"), {"kind": "tpe", "seed": 0})
    pruner = section("pruner", PRUNERS, ("kind", "startup_trials", "warmup_steps", "percentile", "min_resource",
                                         "reduction_factor"), {"kind": "none"})
    intermediate = section("intermediate", None, ("source", "metric", "every"),
                           {"source": "eval", "metric": objectives[0].metric, "every": 0})
    if intermediate["source"] not in ("eval", "metrics"):
        raise ConfigError(f"{where}: intermediate.source={intermediate['source']!r} must be eval or metrics")
    if not isinstance(intermediate["every"], int) or intermediate["every"] < 0:
        raise ConfigError(f"{where}: intermediate.every={intermediate['every']!r} must be an integer >= 0 (iterations)")
    if pruner["kind"] != "none" and len(objectives) > 1:
        raise ConfigError(f"{where}: pruner.kind={pruner['kind']!r} needs a single objective "
                          "(Optuna does not prune multi-objective studies); use pruner: {kind: none}")
    if pruner["kind"] != "none" and not intermediate["every"]:
        raise ConfigError(f"{where}: pruner.kind={pruner['kind']!r} needs intermediate.every > 0 (iterations "
                          "between reports)")
    trials = doc.get("trials", 8)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{where}: trials={trials!r} must be a positive integer")
    label = doc.get("label", "final")
    storage = doc.get("storage")
    grid = doc.get("grid") or f"sweep-{name}"
    sweep = Sweep(name=name, path=path, doc=doc, base=base, common=common, seed=seed, params=params,
                  objectives=objectives, label=str(label), trials=trials, sampler=sampler, pruner=pruner,
                  intermediate=intermediate, storage=storage, grid=str(grid), db=doc.get("db"))

    # every key must exist, and every bound and choice must give a valid config (one at a time, the others low)
    for p in params:
        try:
            config_mod._check_keys(config_mod._nest(p.key.split("."), p.extremes()[0]))
        except ConfigError as e:
            raise ConfigError(f"{where}: param '{p.key}': {e}") from None
    lows = {p.key: p.extremes()[0] for p in params}
    for p in params:
        for v in p.extremes():
            try:
                sweep.config_for({**lows, p.key: v})
            except ConfigError as e:
                raise ConfigError(f"{where}: param '{p.key}' = {fmt_value(v)}: {e}") from None
    return sweep


# ============================================================================ storage and study
def make_storage(url_or_path: str):
    import optuna

    s = str(url_or_path)
    if "://" in s:
        if s.startswith("sqlite:"):
            return optuna.storages.RDBStorage(s, engine_kwargs={"connect_args": {"timeout": 120}})
        return s
    p = Path(s)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix in (".journal", ".log", ".jsonl"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        return JournalStorage(JournalFileBackend(str(p), lock_obj=JournalFileOpenLock(str(p))))
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return optuna.storages.RDBStorage(f"sqlite:///{p}", engine_kwargs={"connect_args": {"timeout": 120}})
    raise ConfigError(f"storage {s!r}: use a .db/.sqlite file (SQLite), a .journal file (journal) or a database URL")


def lock_path_for(storage: str, sweep: Sweep) -> Path:
    if "://" in storage and not storage.startswith("sqlite:///"):
        return sweep.results_dir / f"{sweep.name}.ask-lock"
    p = Path(storage.removeprefix("sqlite:///"))
    return p.with_name(p.name + ".ask-lock")  # not '<journal>.lock': optuna's JournalFileOpenLock uses that name


def trial_locks_dir(storage: str, sweep: Sweep) -> Path:
    """Folder of the trials' liveness locks: <dir>/<number>.lock is held by the worker that runs trial <number>,
    from its ask to its tell, and released by the kernel when that worker dies."""
    return lock_path_for(storage, sweep).with_suffix(".trials")  # <storage>.ask-lock -> <storage>.trials


def trial_lock(storage: str, sweep: Sweep, number: int, blocking: bool = True) -> run_lock:
    return run_lock(trial_locks_dir(storage, sweep), blocking=blocking, name=f"{number}.lock")



def make_sampler(sweep: Sweep, worker: int = 0):
    import optuna

    s = sweep.sampler
    seed = None if s.get("seed") is None else int(s["seed"]) + 7919 * worker  # workers must not propose alike
    if s["kind"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s["kind"] == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    kw = {"n_startup_trials": int(s["startup_trials"])} if s.get("startup_trials") is not None else {}
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, **kw)


def make_pruner(sweep: Sweep):
    import optuna

    p = sweep.pruner
    kind = p["kind"]
    if kind == "none":
        return optuna.pruners.NopPruner()
    startup, warmup = int(p.get("startup_trials", 3)), int(p.get("warmup_steps", 0))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(float(p.get("percentile", 25.0)), n_startup_trials=startup,
                                               n_warmup_steps=warmup)
    return optuna.pruners.HyperbandPruner(min_resource=int(p.get("min_resource", sweep.intermediate["every"])),
                                          reduction_factor=int(p.get("reduction_factor", 3)))


def open_study(sweep: Sweep, storage: str, worker: int = 0, create: bool = False):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = make_storage(storage)
    if create:
        return optuna.create_study(study_name=sweep.name, storage=st, directions=sweep.directions,
                                   sampler=make_sampler(sweep, worker), pruner=make_pruner(sweep), load_if_exists=True)
    return optuna.load_study(study_name=sweep.name, storage=st, sampler=make_sampler(sweep, worker),
                             pruner=make_pruner(sweep))


def counted_trials(study) -> int:
    """Trials that count towards the target: running/waiting ones and finished ones with a recorded outcome
    (interrupted trials that were re-enqueued do not count twice)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or "outcome" in t.user_attrs:
            n += 1
    return n


def reclaim_interrupted(study, locks: Path) -> list[int]:
    """RUNNING trials whose lock in `locks` no process holds were interrupted: FAIL them and enqueue their
    parameters again (same config -> same run folder -> resumes from its last checkpoint). Call it under the
    ask lock: a worker takes its trial's lock in the same section as the ask, and keeps it until its tell
    (the run's own lock is released before the tell, so it cannot tell a finished trial from a dead one)."""
    from optuna.trial import TrialState

    reclaimed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_locked(locks, name=f"{t.number}.lock"):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number}, skip_if_exists=False)
        reclaimed.append(t.number)
    return reclaimed


# ============================================================================ one trial
def objective_values(run_dir: Path, sweep: Sweep) -> list[float] | None:
    from evals.store import read_evals

    for e in reversed(read_evals(run_dir)):
        if e.get("label") == sweep.label:
            m = e.get("metrics") or {}
            vals = [m.get(o.metric) for o in sweep.objectives]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                return [float(v) for v in vals]
            return None
    return None


def intermediate_value(run_dir: Path, sweep: Sweep) -> tuple[float, int] | None:
    """(value, iteration) of the newest intermediate measurement, or None."""
    metric = sweep.intermediate["metric"]
    if sweep.intermediate["source"] == "eval":
        from evals.store import read_evals

        found = [(int(e.get("iteration") or 0), e["metrics"][metric]) for e in read_evals(run_dir)
                 if e.get("label") != sweep.label and metric in (e.get("metrics") or {})]
        if found:
            it, v = max(found, key=lambda x: x[0])
            return float(v), it
        return None
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if metric in row and isinstance(row[metric], (int, float)) and math.isfinite(row[metric]):
            best = (float(row[metric]), int(row["iteration"]))
    return best


def run_trial(trial, sweep: Sweep, cfg: RunConfig, run_dir: Path, job: Callable[..., dict]):
    """Train/evaluate the trial's run; returns (TrialState, values or None, outcome text)."""
    from optuna.trial import TrialState

    every = int(sweep.intermediate.get("every") or 0) if sweep.prunes else 0
    try:
        while True:
            status = job(cfg, run_dir, stop_after=every or None)
            state = status.get("state")
            if not every or state != State.STOPPED:
                break
            got = intermediate_value(run_dir, sweep)
            if got is not None:
                trial.report(got[0], got[1])
                if trial.should_prune():
                    write_status(run_dir, State.STOPPED, cfg,
                                 reason=f"pruned by optuna (trial {trial.number}) at iteration {got[1]}")
                    return TrialState.PRUNED, None, f"pruned at {got[1]}"
    except Exception as e:
        from senseflow.launch import record_failure

        record_failure(run_dir, cfg, f"{type(e).__name__}: {e}")
        return TrialState.FAIL, None, f"failed: {type(e).__name__}: {e}"[:300]
    if state != State.COMPLETED:
        status = read_status(run_dir)
        return TrialState.FAIL, None, f"{status.get('state') or state}: {status.get('reason') or ''}"[:300]
    values = objective_values(run_dir, sweep)
    if values is None:
        return TrialState.FAIL, None, (f"eval.json has no finite {', '.join(o.metric for o in sweep.objectives)} "
                                       f"in the '{sweep.label}' evaluation")
    return TrialState.COMPLETE, values, "completed"


def run_worker(sweep_doc: dict, sweep_path: str | None, storage: str, target: int, job: Any = None,
               worker: int = 0, threads: int = 0) -> int:
    """Ask-and-run loop of one worker process; returns how many trials it finished."""
    from optuna.trial import TrialState

    from senseflow.launch import ExecuteJob, resolve_job, set_threads

    set_threads(threads)
    sweep = _rebuild(sweep_doc, sweep_path)
    fn = resolve_job(job)
    if isinstance(fn, ExecuteJob) and sweep.prunes and sweep.intermediate["source"] == "eval":
        fn = dataclasses.replace(fn, eval_chunks=True)  # evaluate each chunk's checkpoint for the pruner
    study = open_study(sweep, storage, worker)
    lock, locks = lock_path_for(storage, sweep), trial_locks_dir(storage, sweep)
    finished = 0
    with file_lock(lock):
        reclaim_interrupted(study, locks)
    while True:
        with file_lock(lock):
            if counted_trials(study) >= target:
                break
            trial = study.ask()
            alive = trial_lock(storage, sweep, trial.number, blocking=False)
            if not alive.acquire():
                raise RuntimeError(f"trial {trial.number}'s lock {alive.path} is held by another process")
            values = {p.key: p.suggest(trial) for p in sweep.params}
            try:
                cfg = sweep.config_for(values)
            except ConfigError as e:  # a combination the config rejects (e.g. isg.margin vs anchors)
                trial.set_user_attr("outcome", f"invalid: {e}")
                study.tell(trial, state=TrialState.FAIL)
                alive.release()
                continue
            run_dir = sweep.run_dir(cfg).resolve()
            rl = run_lock(run_dir, blocking=False)
            have = rl.acquire()
            trial.set_user_attr("run_id", run_dir.name)
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("worker", worker)
        try:
            if not have:  # same parameters already training in another trial: wait, then reuse its run
                rl = run_lock(run_dir)
                rl.acquire()
            try:
                _write_trial_note(run_dir, sweep, trial.number, values)
                state, vals, outcome = run_trial(trial, sweep, cfg, run_dir, fn)
            finally:
                rl.release()
            trial.set_user_attr("outcome", outcome)
            study.tell(trial, vals if state == TrialState.COMPLETE else None, state=state)
        finally:
            alive.release()
        finished += 1
    return finished


def _write_trial_note(run_dir: Path, sweep: Sweep, number: int, values: dict[str, Any]) -> None:
    path = run_dir / "sweep.json"
    cur = read_json(path)
    trials = sorted(set(cur.get("trials", [])) | {number})
    write_json_atomic(path, {"study": sweep.name, "trials": trials, "params": values})


def _rebuild(doc: dict, path: str | None) -> Sweep:
    if path is not None:
        return load_sweep(path)
    return load_sweep(doc)


# ============================================================================ the command's entry
class SweepWorker(submitit.helpers.Checkpointable):
    """A worker as a submitit job; requeued on preemption (its interrupted trial is resumed by reclaim)."""

    def __init__(self, sweep_doc: dict, sweep_path: str | None, storage: str, target: int, job: Any, worker: int,
                 threads: int = 0):
        self.args = (sweep_doc, sweep_path, storage, target, job, worker, threads)

    def __call__(self) -> int:
        return run_worker(*self.args)


@dataclass
class SweepReport:
    storage: str
    finished_by_worker: list[int]
    errors: list[str]
    seconds: float


def run_sweep(sweep: Sweep, *, trials: int | None = None, workers: int = 1, executor: str = "local",
              profile: Any = None, job: Any = None, storage: str | None = None,
              on_event: Callable[..., None] | None = None) -> SweepReport:
    """Create (or continue) the study and run `workers` workers until it holds `trials` trials."""
    from senseflow.launch import EXECUTORS, cores, load_profile, make_executor, resolve_job

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    resolve_job(job)  # a bad --job fails here, not in every worker
    prof = load_profile(profile) if executor == "slurm" else None
    emit = on_event or (lambda *a, **k: None)
    t0 = time.time()
    target = trials or sweep.trials
    storage = storage or sweep.storage_for(executor)
    study = open_study(sweep, storage, create=True)
    with file_lock(lock_path_for(storage, sweep)):
        reclaimed = reclaim_interrupted(study, trial_locks_dir(storage, sweep))
    if reclaimed:
        emit("reclaim", trials=reclaimed)
    if counted_trials(study) >= target:
        emit("complete", n=counted_trials(study))
        return SweepReport(storage, [], [], time.time() - t0)
    workers = max(1, workers)
    threads = max(1, cores() // workers) if executor != "slurm" else 0
    path = str(sweep.path.resolve()) if sweep.path is not None else None
    # a storage path relative to the cwd must mean the same file inside every worker
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if executor == "debug":
        n = run_worker(sweep.doc, path, storage, target, job, 0, 0)
        return SweepReport(storage, [n], [], time.time() - t0)
    folder = (Path(sweep.results_dir) / ".submitit" / sweep.name).resolve() / "%j"
    ex = make_executor(executor, folder, profile=prof, name=f"sf-sweep-{sweep.name}",
                       array_parallelism=workers if executor == "slurm" else None)
    jobs = []
    if executor == "slurm":
        with ex.batch():
            for w in range(workers):
                jobs.append(ex.submit(SweepWorker(sweep.doc, path, storage, target, job, w, threads)))
    else:
        for w in range(workers):
            jobs.append(ex.submit(SweepWorker(sweep.doc, path, storage, target, job, w, threads)))
    emit("workers", jobs=[str(j.job_id) for j in jobs], storage=storage)
    finished, errors = [], []
    for j in jobs:
        try:
            finished.append(int(j.result()))
        except Exception as e:
            errors.append(f"worker job {j.job_id}: {failure_line(e)} (log: {j.paths.stderr})")
    return SweepReport(storage, finished, errors, time.time() - t0)


def failure_line(e: BaseException) -> str:
    """The line of a failed submitit job's error that names the exception. submitit wraps the worker's
    traceback between dashed lines and ends with the log paths, which say nothing of the cause."""
    lines = [ln.rstrip() for ln in str(e).splitlines() if ln.strip()]
    rules = [i for i, ln in enumerate(lines) if len(ln) >= 10 and set(ln) == {"-"}]
    if len(rules) >= 2:  # submitit.core.utils.FailedJobError: the traceback lies between the rules
        lines = lines[rules[0] + 1:rules[-1]]
    return lines[-1].strip() if lines else type(e).__name__


# ============================================================================ show
def summarize(sweep: Sweep, storage: str | None = None, executor: str = "local") -> dict[str, Any]:
    """Counts by state, the best trial(s) and parameter importances per objective."""
    import optuna
    from optuna.trial import TrialState

    storage = storage or sweep.storage_for(executor)
    if "://" not in storage and not Path(storage).exists():
        other = sweep.storage_for("slurm" if executor != "slurm" else "local")
        if Path(other).exists():
            storage = other
        else:
            raise ConfigError(f"sweep '{sweep.name}' has no study yet ({storage} does not exist); run "
                              f"`senseflow sweep {sweep.path or 'FILE'}` first")
    study = open_study(sweep, storage)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trials if len(sweep.objectives) > 1 else ([study.best_trial] if complete else [])
    importances: dict[str, dict[str, float] | str] = {}
    for i, o in enumerate(sweep.objectives):
        sign = -1.0 if o.direction == "maximize" else 1.0  # evaluators rank params for achieving LOW targets
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PedAnova's reminder about the target's sign
                importances[o.metric] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, sign=sign: sign * t.values[i])
        except (RuntimeError, ValueError, ImportError) as e:
            importances[o.metric] = f"not available ({e})"
    return {"storage": storage, "study": study, "counts": counts, "best": best, "importances": importances,
            "n_complete": len(complete)}
