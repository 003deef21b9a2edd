"""Launching runs with submitit: local processes, in-process debug, or SLURM job arrays.

    launch(specs, executor="local" | "debug" | "slurm", profile=..., parallel=N, job=...)

* `job` is the function each run executes: `job(cfg, run_dir, *, stop_after=None) -> status dict`.
  The default, `ExecuteJob`, calls `senseflow.run.execute`; `SmokeJob` is a stand-in that writes the
  same run-folder files (status, metrics, checkpoints, eval) without torch: for tests and for checking
  a cluster profile (`senseflow grid run FILE --job smoke`). Any `module:function` works too.
* local: one `submitit` LocalExecutor process per run, at most `parallel` at a time (default
  cores // threads per run); every process gets OMP/MKL/torch threads = cfg.train.threads or
  cores // parallel.
* debug: runs one after another in this process (submitit's DebugExecutor); a failing run is recorded
  and the grid goes on (its traceback is in <run_dir>/error.txt).
* slurm: one job array for all pending runs (`slurm_array_parallelism` caps how many run at once),
  resources from a profile in slurm/ (see `SlurmProfile`).

Every executor is named explicitly (`cluster=`): submitit's AutoExecutor would pick SLURM on any
machine where `srun` is on PATH.

Preemption and time limits: each run is wrapped in `CellJob`, a `submitit.helpers.Checkpointable`.
On SIGUSR2 (preemption or the time limit approaching; `signal_delay_s` before it) submitit calls its
`checkpoint()`, which requeues the same call; when the job starts again, `senseflow.train` resumes
from the run's last checkpoint (every `train.checkpoint_every` iterations; per-iteration RNG streams
make the resumed run identical to an uninterrupted one). Work since that checkpoint is redone, so
keep `checkpoint_every` a few minutes of training on clusters that preempt. A job that times out
more than `max_num_timeout` times fails with a recorded reason.

Multi-GPU jobs (profile `tasks_per_node` = GPUs per node, `nodes` >= 1): every task runs the same
`CellJob`; before the job function starts, `export_torch_distributed()` sets MASTER_ADDR (first host
of the job), MASTER_PORT (derived from the job id), RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE
from `submitit.JobEnvironment()`, so `accelerate` (senseflow.train) joins the process group with the
env:// method and senseflow.parallel shards the run over them. Only rank 0 takes the run lock and records
the job. (Multi-process training itself is tested with 2 CPU processes in tests/test_distributed.py.)
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from senseflow import config as config_mod
from senseflow.config import ConfigError, RunConfig
from senseflow.grid import RunSpec, cell_state, run_lock
from senseflow.run_folder import (JOB_FILE, METRICS_FILE, TERMINAL, State, read_json, read_status, update_json,
                                  write_json_atomic, write_status)

EXECUTORS = ("local", "debug", "slurm")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
PROGRESS_EVERY_S = 30.0        # how often launch() reports the running cells (on_event "progress")

JobFn = Callable[..., dict]


# ============================================================================ run-folder records
def update_job_record(run_dir: Path, **fields: Any) -> None:
    """Merge fields into the run's job.json (how it was launched: executor, job id, log files, requeues)."""
    update_json(Path(run_dir) / JOB_FILE, **fields)


def record_failure(run_dir: Path, cfg: RunConfig, reason: str) -> None:
    """Mark a run failed unless it already ended (its own reason wins)."""
    if read_status(run_dir).get("state") in TERMINAL:
        return
    write_status(run_dir, State.FAILED, cfg, reason=reason[:500], finished=time.time())


# ============================================================================ job functions
@dataclass
class ExecuteJob:
    """The real job: senseflow.run.execute (train or resume, then evaluate).

    eval_chunks (sweeps with pruning): when a call with stop_after ends before the last iteration, the
    checkpoint it wrote is evaluated too (eval.json label 'iter_<N>'), giving the pruner an
    intermediate value of the objective metric.
    """

    evaluate: bool = True
    progress: bool = False
    eval_chunks: bool = False

    def __call__(self, cfg: RunConfig, run_dir: Path, *, stop_after: int | None = None) -> dict:
        from senseflow.run import execute

        status = execute(cfg, run_dir, progress=self.progress, stop_after=stop_after, evaluate=self.evaluate)
        if self.eval_chunks and stop_after and status.get("state") == "stopped":
            self.evaluate_checkpoint(cfg, Path(run_dir), int(status.get("iteration") or 0))
        return status

    def evaluate_checkpoint(self, cfg: RunConfig, run_dir: Path, iteration: int) -> None:
        from senseflow import checkpoint
        from senseflow.components import build_components
        from senseflow.evaluate import evaluate_run

        components = build_components(cfg, progress=self.progress)
        restored = checkpoint.restore(run_dir, components, cfg=cfg)  # the distiller at `iteration`
        evaluate_run(cfg, run_dir, restored.distiller, components, progress=self.progress,
                     label=f"iter_{iteration}", iteration=iteration, main=restored.distiller.parallel.is_main)


def smoke_metrics(cfg: RunConfig) -> dict[str, float]:
    """Deterministic stand-in metrics with an optimum inside the usual search ranges (for sweeps' tests)."""
    o = cfg.optim
    fid = (10.0 + 400.0 * (cfg.ida.lam - 0.95) ** 2 * cfg.ida.enabled + 8.0 * (math.log10(o.lr_generator) + 3.5) ** 2
           + 0.5 * abs(o.ttur - 3) + 2.0 * (cfg.isg.weight - 0.7) ** 2 * cfg.isg.enabled + 3.0 * (cfg.gan.weight - 0.1) ** 2
           + (0.0 if cfg.isg.enabled else 4.0) + (0.0 if cfg.ida.enabled else 6.0))
    fid += random.Random(f"{cfg.train.seed}-{cfg.name}").uniform(-0.05, 0.05)
    return {"fid_t": round(fid, 6), "prompt_accuracy": round(1.0 / (1.0 + fid / 40.0) - 0.1 * cfg.isg.margin / 100, 6)}


@dataclass
class SmokeJob:
    """Stand-in for senseflow.run.execute: no torch, same run-folder files and resume semantics.

    Sleeps `step_seconds` per iteration, logs every train.log_every iterations, checkpoints every
    train.checkpoint_every (checkpoints/iter_XXXXXXX/trainer.json) and resumes from the last one,
    writes eval.json (intermediate evaluations at checkpoints, 'final' at the end) with `smoke_metrics`.
    Cells named in `fail` raise halfway; cells named in `diverge` end 'diverged' halfway.
    """

    step_seconds: float = 0.01
    fail: tuple[str, ...] = ()
    diverge: tuple[str, ...] = ()

    def __call__(self, cfg: RunConfig, run_dir: Path, *, stop_after: int | None = None) -> dict:
        from evals.store import record_eval

        run_dir = Path(run_dir)
        status = read_status(run_dir)
        if status.get("state") == State.COMPLETED:
            return status
        run_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, run_dir / "config.yaml")
        ckdir = run_dir / "checkpoints"
        done = [int(read_json(p / "trainer.json").get("iteration", 0)) for p in sorted(ckdir.glob("iter_*"))]
        start = max(done, default=0)
        total = cfg.train.iterations
        end = total if stop_after is None else min(total, start + stop_after)
        mpath = run_dir / METRICS_FILE
        if mpath.exists():
            keep = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln)["iteration"] <= start]
            mpath.write_text("".join(k + "\n" for k in keep))
        write_status(run_dir, State.RUNNING, cfg, iteration=start, started=time.time(), reason="",
                     resumed_from=start or None, pid=os.getpid())
        final = smoke_metrics(cfg)
        t0 = time.time()

        def ckpt(n: int) -> None:
            d = ckdir / f"iter_{n:07d}"
            d.mkdir(parents=True, exist_ok=True)
            write_json_atomic(d / "trainer.json", {"iteration": n})

        for it in range(start, end):
            time.sleep(self.step_seconds)
            n = it + 1
            if cfg.name in self.fail and n > total // 2:
                raise RuntimeError(f"smoke job: cell '{cfg.name}' fails on purpose at iteration {n}")
            if cfg.name in self.diverge and n > total // 2:
                return write_status(run_dir, State.DIVERGED, cfg, iteration=it, finished=time.time(),
                                    reason=f"iteration {it}: smoke job diverges on purpose")
            progress = n / total
            if n % cfg.train.log_every == 0 or n == end:
                row = {"iteration": n, "time": round(time.time() - t0, 3), "loss_dmd": 1.0 - 0.5 * progress,
                       "fid_t": final["fid_t"] * (1.0 + 2.0 * (1.0 - progress))}
                with open(mpath, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if n % cfg.train.checkpoint_every == 0 and n < total:
                ckpt(n)
                record_eval(run_dir, iteration=n, label=f"iter_{n}",
                            metrics={k: v * (1.0 + 2.0 * (1.0 - progress)) if k == "fid_t" else v * progress
                                     for k, v in final.items()})
                write_status(run_dir, State.RUNNING, cfg, iteration=n)
        if end < total:
            ckpt(end)
            return write_status(run_dir, State.STOPPED, cfg, iteration=end)
        ckpt(total)
        record_eval(run_dir, iteration=total, label="final", metrics=final, num_samples=cfg.eval.num_samples)
        return write_status(run_dir, State.COMPLETED, cfg, iteration=total, finished=time.time())


def resolve_job(job: str | JobFn | None, *, evaluate: bool = True) -> JobFn:
    """'execute' (default), 'smoke', 'module:function' / 'module.function', or a callable."""
    if job is None or job == "execute":
        return ExecuteJob(evaluate=evaluate)
    if callable(job):
        return job
    if job == "smoke":
        return SmokeJob(step_seconds=float(os.environ.get("SENSEFLOW_SMOKE_STEP_S", "0.01")))
    mod, _, attr = job.partition(":") if ":" in job else job.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"--job {job!r}: cannot import it ({e}); use execute, smoke or module:function") from None
    return obj() if isinstance(obj, type) else obj


# ============================================================================ inside a job
def job_environment():
    """submitit's JobEnvironment when running under submitit, else None."""
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def export_torch_distributed(env) -> dict[str, str]:
    """torch.distributed env:// variables for this task of a multi-task submitit job (overwrites nothing set)."""
    port = 20000 + random.Random(str(env.job_id).split("_")[0]).randrange(40000)
    values = {"MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(port), "RANK": str(env.global_rank),
              "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
              "LOCAL_WORLD_SIZE": str(max(1, env.num_tasks // max(1, env.num_nodes)))}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    return values


def set_threads(n: int) -> None:
    if n <= 0:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class CellJob(submitit.helpers.Checkpointable):
    """One run as a submitit job. Requeued on preemption; the run resumes from its own last checkpoint."""

    def __init__(self, job: JobFn, cfg: dict, run_dir: str, threads: int = 0, raise_on_failure: bool = True):
        self.job = job
        self.cfg = cfg
        self.run_dir = run_dir
        self.threads = threads
        self.raise_on_failure = raise_on_failure

    def __call__(self) -> dict:
        set_threads(self.threads)
        env = job_environment()
        if env is not None and env.num_tasks > 1:
            export_torch_distributed(env)
        rank = env.global_rank if env is not None else 0
        cfg = config_mod.build(self.cfg)
        run_dir = Path(self.run_dir)
        lock = run_lock(run_dir) if rank == 0 else None
        if lock is not None:
            lock.acquire()
            update_job_record(run_dir, host=socket.gethostname(), pid=os.getpid(), started=time.time(),
                              restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
        try:
            return self.job(cfg, run_dir)
        except KeyboardInterrupt:  # cancelled (local jobs get SIGINT): resumable, not failed
            if rank == 0 and read_status(run_dir).get("state") in (State.RUNNING, State.EVALUATING):
                write_status(run_dir, State.STOPPED, cfg, reason="interrupted")
            raise
        except Exception as e:
            if rank == 0:
                record_failure(run_dir, cfg, f"{type(e).__name__}: {e}")
            if self.raise_on_failure:
                raise
            return read_status(run_dir)
        finally:
            if lock is not None:
                lock.release()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # The run's checkpoints hold the training state; requeue the same call and let train.py resume.
        rd = Path(self.run_dir)
        rec = read_json(rd / JOB_FILE)
        update_job_record(rd, requeues=int(rec.get("requeues", 0)) + 1, last_requeue=time.time(),
                          requeued_at_iteration=read_status(rd).get("iteration"))
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ============================================================================ SLURM profiles
class SlurmProfile(BaseModel):
    """Resources of one SLURM job (one run). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int | None = Field(None, ge=1, description="default: one task per GPU (1 without GPUs)")
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(60, ge=1)
    constraint: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job (module load ...)")
    array_parallelism: int = Field(16, ge=1, description="how many runs of an array run at once")
    signal_delay_s: int = Field(120, ge=0, description="USR2 this long before the time limit -> requeue")
    max_num_timeout: int = Field(20, ge=0, description="requeues allowed after time limits")
    job_name: str | None = None
    python: str | None = Field(None, description="python on the nodes (default: this interpreter)")
    additional: dict[str, Any] = Field(default_factory=dict, description="extra #SBATCH keys")
    srun_args: list[str] = Field(default_factory=list)

    def executor_parameters(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "timeout_min": self.timeout_min, "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node or max(1, self.gpus_per_node),
            "cpus_per_task": self.cpus_per_task, "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s, "slurm_setup": list(self.setup),
        }
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            p["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                p[f"slurm_{key}"] = getattr(self, key)
        if self.additional:
            p["slurm_additional_parameters"] = dict(self.additional)
        if self.srun_args:
            p["slurm_srun_args"] = list(self.srun_args)
        return p


def load_profile(source: str | Path | dict | None) -> SlurmProfile:
    """A profile from slurm/NAME.yaml, a path, or a mapping (None: all defaults)."""
    if source is None:
        return SlurmProfile()
    if isinstance(source, dict):
        data, where = source, "profile"
    else:
        p = Path(source)
        if not p.exists() and not p.suffix:
            p = Path("slurm") / f"{source}.yaml"
        if not p.is_file():
            avail = sorted(x.stem for x in Path("slurm").glob("*.yaml"))
            raise ConfigError(f"SLURM profile '{source}' not found (profiles in slurm/: {', '.join(avail) or 'none'})")
        data, where = (yaml.safe_load(p.read_text()) or {}), str(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a profile must be a mapping of keys")
    try:
        return SlurmProfile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            import difflib

            fields = list(SlurmProfile.model_fields)
            close = difflib.get_close_matches(loc, fields, n=1) or [f for f in fields if f.startswith(loc)][:1]
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(SlurmProfile.model_fields)}"
            raise ConfigError(f"{where}: unknown key '{loc}'{hint}") from None
        raise ConfigError(f"{where}: {loc}={first.get('input')!r}: {first['msg']}") from None


def check_executor(kind: str) -> None:
    """ConfigError (one line) when `kind` is unknown, or is slurm on a machine without SLURM's tools."""
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "slurm":
        import shutil

        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"--executor slurm needs SLURM's {' and '.join(missing)} on PATH, not found on this "
                              "machine; run from a cluster login node, or use --executor local")


def make_executor(kind: str, folder: Path, *, profile: SlurmProfile | None = None, name: str = "senseflow",
                  array_parallelism: int | None = None):
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    check_executor(kind)
    if kind == "slurm":
        prof = profile or SlurmProfile()
        init = {"slurm_max_num_timeout": prof.max_num_timeout}
        if prof.python:
            init["slurm_python"] = prof.python
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
        params = prof.executor_parameters()
        if array_parallelism:
            params["slurm_array_parallelism"] = array_parallelism
        ex.update_parameters(name=prof.job_name or name, **params)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    if kind == "local":
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, name=name)
    return ex


# ============================================================================ launching a grid
@dataclass
class Outcome:
    spec: RunSpec
    state: str                  # completed | failed | diverged | stopped | skipped:<why> | submitted
    reason: str = ""
    job_id: str = ""
    seconds: float = 0.0


@dataclass
class LaunchReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_parallel(specs: list[RunSpec]) -> int:
    threads = max([s.cfg.train.threads or 1 for s in specs] or [1])
    return max(1, cores() // threads)


def submitit_folder(specs: list[RunSpec]) -> Path:
    s = specs[0]
    return (Path(s.cfg.output.root) / s.cfg.output.grid / ".submitit").resolve()


def live_slurm_jobs(specs: list[RunSpec]) -> dict[str, str]:
    """run_id -> 'JOBID STATE' for runs whose recorded SLURM job is still queued or running (one squeue call)."""
    recs = {s.run_id: read_json(s.run_dir / JOB_FILE) for s in specs}
    ids = {r["job_id"]: rid for rid, r in recs.items() if r.get("executor") == "slurm" and r.get("job_id")}
    if not ids or shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    live = {}
    for line in out.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in ids and state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED",
                                    "COMPLETING", "RESIZING"):
            live[ids[jid]] = f"{jid} {state}"
    return live


def _set_aside(run_dir: Path) -> Path:
    """Move a finished-but-bad run folder out of the way (hidden: the store ignores it) before a retry."""
    dest = run_dir.with_name(f".{run_dir.name}.retry-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(run_dir, dest)
    return dest


def plan_launch(specs: list[RunSpec], *, retry_failed: bool = False) -> tuple[list[RunSpec], list[Outcome]]:
    """(runs to launch, outcomes for those skipped). Done runs are skipped; failed/diverged ones too unless
    retry_failed (a failed run then resumes from its last checkpoint; a diverged one starts again, its old
    folder kept hidden as .<run_id>.retry-<time>)."""
    todo, skipped = [], []
    live = live_slurm_jobs(specs)
    for s in specs:
        st = cell_state(s)
        if s.run_id in live:
            skipped.append(Outcome(s, "skipped:queued", f"SLURM job {live[s.run_id]}"))
        elif st.kind == "done":
            skipped.append(Outcome(s, "skipped:done"))
        elif st.kind == "running":
            skipped.append(Outcome(s, "skipped:running", "another process holds its run lock"))
        elif st.kind in ("failed", "diverged") and not retry_failed:
            skipped.append(Outcome(s, f"skipped:{st.kind}", st.reason))
        else:
            if st.kind == "diverged":
                _set_aside(s.run_dir)
            todo.append(s)
    return todo, skipped


def _outcome_from(spec: RunSpec, job: Any, t0: float) -> Outcome:
    reason = ""
    try:
        job.result()
    except Exception as e:  # FailedJobError (traceback inside), UncompletedJobError (killed, cancelled)
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else type(e).__name__
        record_failure(spec.run_dir, spec.cfg, f"job {job.job_id}: {reason}")
    status = read_status(spec.run_dir)
    state = status.get("state") or State.FAILED
    return Outcome(spec, state, str(status.get("reason") or reason), str(job.job_id), time.time() - t0)


def launch(specs: list[RunSpec], *, executor: str = "local", profile: SlurmProfile | str | Path | None = None,
           parallel: int | None = None, job: str | JobFn | None = None, evaluate: bool = True,
           retry_failed: bool = False, wait: bool = True, poll_s: float = 1.0,
           on_event: Callable[..., None] | None = None) -> LaunchReport:
    """Run (or resume) every spec that is not done; returns what happened to each.

    on_event(kind, spec, **info) with kind in skip | submit | finish | progress | detach.
    """
    emit = on_event or (lambda *a, **k: None)
    report = LaunchReport()
    if not specs:
        return report
    # everything that can be wrong with the arguments fails here, before any run folder is touched
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    fn = resolve_job(job, evaluate=evaluate)
    prof = (profile if isinstance(profile, SlurmProfile) else load_profile(profile)) if executor == "slurm" else None
    ex = make_executor(executor, submitit_folder(specs) / "%j", profile=prof, name=f"sf-{specs[0].cfg.output.grid}",
                       array_parallelism=parallel)

    todo, skipped = plan_launch(specs, retry_failed=retry_failed)
    for o in skipped:
        report.outcomes.append(o)
        emit("skip", o.spec, state=o.state, reason=o.reason)
    if not todo:
        return report
    cap = parallel or default_parallel(todo)

    def threads(s: RunSpec) -> int:
        if executor == "local":  # processes here share the cores
            return s.cfg.train.threads or max(1, cores() // cap)
        return s.cfg.train.threads if executor == "slurm" else 0  # slurm: else the profile's setup lines

    def cell_job(s: RunSpec) -> CellJob:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        return CellJob(fn, s.cfg.to_dict(), str(s.run_dir.resolve()), threads=threads(s),
                       raise_on_failure=executor != "debug")

    def record(s: RunSpec, j: Any) -> None:
        update_job_record(s.run_dir, executor=executor, job_id=str(j.job_id), submitted=time.time(),
                          stdout=str(j.paths.stdout), stderr=str(j.paths.stderr), requeues=0)
        emit("submit", s, job_id=str(j.job_id))

    if executor == "debug":
        for s in todo:
            t0 = time.time()
            j = ex.submit(cell_job(s))
            record(s, j)
            o = _outcome_from(s, j, t0)
            report.outcomes.append(o)
            emit("finish", s, state=o.state, reason=o.reason, seconds=o.seconds)
        return report

    pending: deque[RunSpec] = deque(todo)
    active: dict[str, tuple[RunSpec, Any, float]] = {}
    if executor == "slurm":
        with ex.batch():
            submitted = [(s, ex.submit(cell_job(s))) for s in todo]
        for s, j in submitted:
            j._results_timeout_s = 5  # a cancelled job has no result file: don't wait 15 s for one
            record(s, j)
            active[s.run_id] = (s, j, time.time())
        pending.clear()
        if not wait:
            for s, j in submitted:
                report.outcomes.append(Outcome(s, "submitted", job_id=str(j.job_id)))
            emit("detach", None, jobs=[str(j.job_id) for _, j in submitted])
            return report

    last_progress = time.time()
    try:
        while pending or active:
            while pending and len(active) < cap:
                s = pending.popleft()
                j = ex.submit(cell_job(s))
                record(s, j)
                active[s.run_id] = (s, j, time.time())
            for rid, (s, j, t0) in list(active.items()):
                if j.done():
                    del active[rid]
                    o = _outcome_from(s, j, t0)
                    report.outcomes.append(o)
                    emit("finish", s, state=o.state, reason=o.reason, seconds=o.seconds, job_id=o.job_id)
            if active and time.time() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.time()
                for s, j, _ in active.values():
                    st = read_status(s.run_dir)
                    emit("progress", s, iteration=st.get("iteration"), state=st.get("state"), job_id=str(j.job_id))
            if pending or active:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        if executor == "local":
            for s, j, _ in active.values():
                j.cancel(check=False)
        raise
    return report
