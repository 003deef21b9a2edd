"""Launching grids: local and debug executors with stand-in jobs, failures, resume, requeue, the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from senseflow.cli import main
from senseflow.grid import cell_state, load_grid
from senseflow.launch import (CellJob, SmokeJob, cores, default_parallel, export_torch_distributed, launch,
                              make_executor, resolve_job)
from senseflow.run_folder import read_status


def grid_file(tmp_path: Path, iterations: int = 20, seeds=(0, 1), variants=("A", "B"), **over) -> Path:
    doc = {"grid": "t", "base": "digits-senseflow", "allow_outside_results": True,
           "overrides": {"train.iterations": iterations, "train.checkpoint_every": 5, "train.log_every": 5,
                         "output.root": str(tmp_path / "results" / "runs"), **over},
           "seeds": list(seeds), "variants": [{"name": v, "overrides": {"isg.weight": 0.5 + i}}
                                               for i, v in enumerate(variants)]}
    p = tmp_path / "grid.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(doc))
    return p


def metric_iterations(run_dir: Path) -> list[int]:
    return [json.loads(ln)["iteration"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def env_job(cfg, run_dir, *, stop_after=None):
    """A custom job function (module:function): records the threads it was given."""
    st = SmokeJob(step_seconds=0.0)(cfg, run_dir)
    (Path(run_dir) / "env.json").write_text(json.dumps({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}))
    return st


def test_local_executor_runs_cells_in_parallel_then_skips_them(tmp_path):
    specs = load_grid(grid_file(tmp_path)).specs
    t0 = time.time()
    events = []
    rep = launch(specs, executor="local", parallel=2, job=SmokeJob(step_seconds=0.02),
                 on_event=lambda kind, spec, **i: events.append(kind), poll_s=0.2)
    assert [o.state for o in rep.outcomes] == ["completed"] * 4
    for s in specs:
        st = read_status(s.run_dir)
        assert st["state"] == "completed" and st["iteration"] == 20 and st["variant"] == s.name
        assert metric_iterations(s.run_dir) == [5, 10, 15, 20]
        job = json.loads((s.run_dir / "job.json").read_text())
        assert job["executor"] == "local" and job["job_id"] and Path(job["stdout"]).parent.name == job["job_id"]
        assert json.loads((s.run_dir / "eval.json").read_text())["evaluations"][-1]["label"] == "final"
    assert events.count("submit") == 4 and events.count("finish") == 4
    first = time.time() - t0
    t1 = time.time()
    again = launch(specs, executor="local", job=SmokeJob())
    assert [o.state for o in again.outcomes] == ["skipped:done"] * 4
    assert time.time() - t1 < min(first, 2.0)


def test_debug_executor_runs_in_process_and_records_failures(tmp_path):
    specs = load_grid(grid_file(tmp_path, seeds=(0,), variants=("A", "broken", "C"))).specs
    rep = launch(specs, executor="debug", job=SmokeJob(step_seconds=0.0, fail=("broken",)))
    assert [o.state for o in rep.outcomes] == ["completed", "failed", "completed"]
    st = read_status(specs[1].run_dir)
    assert st["state"] == "failed" and "fails on purpose at iteration 11" in st["reason"]
    assert cell_state(specs[1]).kind == "failed"


def test_failed_and_diverged_cells_are_recorded_while_the_rest_completes(tmp_path):
    specs = load_grid(grid_file(tmp_path, seeds=(0,), variants=("ok", "crash", "nan", "ok2"))).specs
    job = SmokeJob(step_seconds=0.01, fail=("crash",), diverge=("nan",))
    rep = launch(specs, executor="local", parallel=2, job=job, poll_s=0.2)
    states = {o.spec.name: (o.state, o.reason) for o in rep.outcomes}
    assert states["ok"][0] == states["ok2"][0] == "completed"
    assert states["crash"][0] == "failed" and "RuntimeError: smoke job: cell 'crash' fails on purpose" in states["crash"][1]
    assert states["nan"][0] == "diverged" and "diverges on purpose" in states["nan"][1]
    # a re-run skips them with their reasons; --retry-failed resumes the failed one, restarts the diverged one
    again = {o.spec.name: o for o in launch(specs, executor="local", job=job).outcomes}
    assert again["crash"].state == "skipped:failed" and "fails on purpose" in again["crash"].reason
    assert again["nan"].state == "skipped:diverged"
    fixed = {o.spec.name: o.state for o in launch(specs, executor="local", job=SmokeJob(step_seconds=0.0),
                                                   retry_failed=True, poll_s=0.2).outcomes}
    assert fixed == {"ok": "skipped:done", "ok2": "skipped:done", "crash": "completed", "nan": "completed"}
    crash, nan = specs[1].run_dir, specs[2].run_dir
    assert read_status(crash)["resumed_from"] == 10          # resumed from the checkpoint before the crash
    assert read_status(nan).get("resumed_from") is None       # diverged: started again ...
    assert list(nan.parent.glob(f".{nan.name}.retry-*"))      # ... with the old folder kept aside (hidden)


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, capsys):
    path = grid_file(tmp_path, iterations=30, seeds=(0,), variants=("A",))
    spec = load_grid(path).specs[0]
    SmokeJob(step_seconds=0.0)(spec.cfg, spec.run_dir, stop_after=12)  # as if killed after iteration 12
    assert main(["grid", "plan", str(path)]) == 0
    assert "partial(12/30, stopped)" in capsys.readouterr().out
    rep = launch([spec], executor="debug", job=SmokeJob(step_seconds=0.0))
    assert rep.outcomes[0].state == "completed"
    assert read_status(spec.run_dir)["resumed_from"] == 12
    assert metric_iterations(spec.run_dir) == [5, 10, 12, 15, 20, 25, 30]  # 12: logged where it stopped


def test_preempted_job_checkpoints_requeues_and_resumes(tmp_path):
    """USR2 (what SLURM sends before preemption / the time limit) -> CellJob.checkpoint -> requeue -> resume."""
    spec = load_grid(grid_file(tmp_path, iterations=40, seeds=(0,), variants=("A",))).specs[0]
    ex = make_executor("local", tmp_path / "submitit" / "%j")
    spec.run_dir.mkdir(parents=True)
    job = ex.submit(CellJob(SmokeJob(step_seconds=0.1), spec.cfg.to_dict(), str(spec.run_dir)))
    t0 = time.time()
    while (read_status(spec.run_dir).get("iteration") or 0) < 10:
        assert time.time() - t0 < 60, "the job never reached its first checkpoint"
        time.sleep(0.1)
    pid = json.loads((spec.run_dir / "job.json").read_text())["pid"]
    os.kill(pid, signal.SIGUSR2)
    st = job.result()
    assert st["state"] == "completed" and st["iteration"] == 40
    rec = json.loads((spec.run_dir / "job.json").read_text())
    assert rec["requeues"] == 1 and rec["pid"] != pid
    assert 10 <= read_status(spec.run_dir)["resumed_from"] < 40
    its = metric_iterations(spec.run_dir)
    assert its == sorted(set(its)) and its[-1] == 40


def test_cli_grid_run_status_and_sync(tmp_path, capsys):
    path = grid_file(tmp_path, seeds=(0,))
    db = tmp_path / "store.duckdb"
    assert main(["grid", "run", str(path), "--job", "smoke", "--executor", "debug", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("completed") >= 2 and ("synced" in out or "store not available" in out)
    assert main(["grid", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("done") >= 2 and "fid_t=" in out and "debug" in out
    if "synced" in out or db.exists():
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("select count(*) from runs where state = 'completed'").fetchone()[0] == 2
    # a failing cell makes the command exit 1 after the others ran
    assert main(["grid", "run", str(grid_file(tmp_path, seeds=(1,))), "--job", "tests.test_launch:crash_job",
                 "--executor", "debug", "--no-sync"]) == 1


def crash_job(cfg, run_dir, *, stop_after=None):
    raise ValueError("no weights here")


def test_local_jobs_get_cores_divided_threads(tmp_path):
    # the digits preset pins one thread per run: runs in parallel on every core, each told to use 1 thread
    pinned = load_grid(grid_file(tmp_path / "pinned", seeds=(0,))).specs
    assert pinned[0].cfg.train.threads == 1 and default_parallel(pinned) == cores()
    launch(pinned, executor="local", parallel=1, job=resolve_job("tests.test_launch:env_job"), poll_s=0.2)
    assert json.loads((pinned[0].run_dir / "env.json").read_text())["OMP_NUM_THREADS"] == "1"
    # with no pinned count, one run at a time gets every core
    free = load_grid(grid_file(tmp_path / "free", seeds=(0,), **{"train.threads": 0})).specs
    assert default_parallel(free) == cores()
    launch(free, executor="local", parallel=1, job=resolve_job("tests.test_launch:env_job"), poll_s=0.2)
    assert json.loads((free[0].run_dir / "env.json").read_text())["OMP_NUM_THREADS"] == str(cores())


def test_torch_distributed_environment_from_the_job():
    class Env:
        job_id, hostnames, global_rank, local_rank, num_tasks, num_nodes = "77_3", ["n1", "n2"], 9, 1, 16, 2

    saved = {k: os.environ.pop(k, None) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                  "LOCAL_WORLD_SIZE")}
    try:
        v = export_torch_distributed(Env())
        assert (v["MASTER_ADDR"], v["RANK"], v["WORLD_SIZE"], v["LOCAL_RANK"], v["LOCAL_WORLD_SIZE"]) == ("n1", "9", "16", "1", "8")
        assert 20000 <= int(v["MASTER_PORT"]) < 60000 and os.environ["RANK"] == "9"
        assert export_torch_distributed(Env())["MASTER_PORT"] == v["MASTER_PORT"]  # same job -> same port on every task
    finally:
        for k, val in saved.items():
            os.environ.pop(k, None)
            if val is not None:
                os.environ[k] = val


def test_bad_job_and_executor_are_one_line_errors(tmp_path, capsys):
    path = grid_file(tmp_path, seeds=(0,))
    assert main(["grid", "run", str(path), "--job", "nope.module:fn", "--no-sync"]) == 2
    assert "--job 'nope.module:fn': cannot import it" in capsys.readouterr().err
    assert main(["grid", "run", str(path), "--executor", "kubernetes", "--job", "smoke", "--no-sync"]) == 2
    assert "--executor 'kubernetes' is not one of local, debug, slurm" in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_run_lock_keeps_two_launches_off_the_same_run(tmp_path, executor):
    from senseflow.grid import run_lock

    spec = load_grid(grid_file(tmp_path, seeds=(0,), variants=("A",))).specs[0]
    with run_lock(spec.run_dir):
        rep = launch([spec], executor=executor, job=SmokeJob())
    assert rep.outcomes[0].state == "skipped:running"


def test_cancelled_local_job_is_stopped_not_failed(tmp_path):
    spec = load_grid(grid_file(tmp_path, iterations=200, seeds=(0,), variants=("A",))).specs[0]
    spec.run_dir.mkdir(parents=True)
    job = make_executor("local", tmp_path / "submitit" / "%j").submit(
        CellJob(SmokeJob(step_seconds=0.02), spec.cfg.to_dict(), str(spec.run_dir)))
    t0 = time.time()
    while (read_status(spec.run_dir).get("iteration") or 0) < 5:
        assert time.time() - t0 < 60
        time.sleep(0.1)
    job.cancel()
    while not job.done():
        assert time.time() - t0 < 60
        time.sleep(0.1)
    st = read_status(spec.run_dir)
    assert (st["state"], st["reason"]) == ("stopped", "interrupted")
    assert cell_state(spec).describe().startswith("partial(") and cell_state(spec).iteration >= 5
