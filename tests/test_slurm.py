"""SLURM: profiles (always) and, marked `slurm`, grids and sweeps through the real one-node cluster
started by slurm/ci-up.sh, including a requeue in the middle of a run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from senseflow.cli import main
from senseflow.config import ConfigError
from senseflow.grid import load_grid
from senseflow.launch import CellJob, SlurmProfile, SmokeJob, launch, load_profile, make_executor
from senseflow.run_folder import read_status

REPO = Path(__file__).resolve().parents[1]
CI_PROFILE = REPO / "slurm" / "ci.yaml"


# ----------------------------------------------------------------------------- profiles (no cluster)
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "slurm").glob("*.yaml")))
def test_shipped_profiles_load(name):
    prof = load_profile(REPO / "slurm" / name)
    params = prof.executor_parameters()
    assert params["timeout_min"] >= 1 and params["tasks_per_node"] == (prof.tasks_per_node or max(1, prof.gpus_per_node))


@pytest.mark.slurm  # submitit's SLURM executor refuses to exist where srun is not on PATH
def test_profile_becomes_sbatch_lines(tmp_path):
    prof = load_profile(REPO / "slurm" / "a100x8.yaml")
    ex = make_executor("slurm", tmp_path / "%j", profile=prof, name="sf-test", array_parallelism=3)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=900GB", "#SBATCH --time=1440",
                 "#SBATCH --constraint=a100-80gb", "#SBATCH --signal=USR2@300", "#SBATCH --job-name=sf-test",
                 "module load cuda/12.4 || true"):
        assert line in text, line
    assert "--account" not in text and "--qos" not in text  # null in the profile: left to the site default
    site = load_profile({"partition": "p", "account": "proj42", "qos": "high", "additional": {"exclusive": True}})
    text = make_executor("slurm", tmp_path / "%j", profile=site)._executor._make_submission_file_text("x", "u")
    assert "#SBATCH --account=proj42" in text and "#SBATCH --qos=high" in text and "#SBATCH --exclusive" in text


def test_profile_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'gpus'; did you mean 'gpus_per_node'?"):
        load_profile({"gpus": 8})
    with pytest.raises(ConfigError, match="timeout_min=0"):
        load_profile({"timeout_min": 0})
    with pytest.raises(ConfigError, match="SLURM profile 'nope' not found"):
        load_profile("nope")
    assert load_profile(None) == SlurmProfile()


def test_cluster_scripts_parse():
    for script in ("ci-up.sh", "ci-down.sh"):
        subprocess.run(["bash", "-n", str(REPO / "slurm" / script)], check=True)


# ----------------------------------------------------------------------------- the real cluster
def smoke_grid(tmp_path: Path, names=("A", "B"), seeds=(0, 1), iterations=20, checkpoint_every=5) -> Path:
    doc = {"grid": "slurm-smoke", "base": "digits-senseflow", "allow_outside_results": True,
           "overrides": {"train.iterations": iterations, "train.checkpoint_every": checkpoint_every,
                         "train.log_every": 5, "output.root": str(tmp_path / "results" / "runs")},
           "seeds": list(seeds), "variants": [{"name": n, "overrides": {"isg.weight": 0.5 + i}}
                                               for i, n in enumerate(names)]}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def sacct_states(job_ids: list[str], timeout: float = 20.0) -> dict[str, str]:
    """Final accounting states (sacct lags the result files by a second or two)."""
    t0 = time.time()
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        if (len(states) == len(job_ids) and all(v in ("COMPLETED", "FAILED") for v in states.values())
                or time.time() - t0 > timeout):
            return states
        time.sleep(0.5)


@pytest.mark.slurm
def test_grid_array_through_slurm_records_failures_and_skips_done(tmp_path):
    specs = load_grid(smoke_grid(tmp_path, names=("ok", "crash"), seeds=(0, 1))).specs
    rep = launch(specs, executor="slurm", profile=CI_PROFILE, parallel=2, poll_s=0.5,
                 job=SmokeJob(step_seconds=0.02, fail=("crash",)))
    got = {(o.spec.name, o.spec.seed): o for o in rep.outcomes}
    assert [got[("ok", s)].state for s in (0, 1)] == ["completed", "completed"]
    assert [got[("crash", s)].state for s in (0, 1)] == ["failed", "failed"]
    assert "fails on purpose" in read_status(specs[2].run_dir)["reason"]
    ids = [o.job_id for o in rep.outcomes]
    assert len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids)  # one array job
    for s in specs:
        rec = json.loads((s.run_dir / "job.json").read_text())
        assert rec["executor"] == "slurm" and Path(rec["stdout"]).exists()
    states = sacct_states(ids)
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"]
    again = launch(specs, executor="slurm", profile=CI_PROFILE, job=SmokeJob())
    assert sorted(o.state for o in again.outcomes) == ["skipped:done"] * 2 + ["skipped:failed"] * 2


@pytest.mark.slurm
def test_requeue_mid_run_resumes_from_the_run_checkpoint(tmp_path):
    """Preemption (USR2 -> CellJob.checkpoint -> requeue) and an external `scontrol requeue` (no signal,
    the job restarts from its original pickle): both runs resume from their own last checkpoint."""
    specs = load_grid(smoke_grid(tmp_path, names=("preempted", "requeued"), seeds=(0,), iterations=60)).specs
    ex = make_executor("slurm", tmp_path / "submitit" / "%j", profile=load_profile(CI_PROFILE))
    jobs = []
    for s in specs:
        s.run_dir.mkdir(parents=True)
        jobs.append(ex.submit(CellJob(SmokeJob(step_seconds=0.1), s.cfg.to_dict(), str(s.run_dir))))
    t0 = time.time()
    while min(read_status(s.run_dir).get("iteration") or 0 for s in specs) < 10:
        assert time.time() - t0 < 90, "the jobs never reached their first checkpoints"
        time.sleep(0.2)
    jobs[0]._interrupt()                                            # as SLURM does before preempting
    subprocess.run(["scontrol", "requeue", jobs[1].job_id], check=True)
    results = [j.result() for j in jobs]
    assert [r["state"] for r in results] == ["completed", "completed"]
    for s, j in zip(specs, jobs):
        st, rec = read_status(s.run_dir), json.loads((s.run_dir / "job.json").read_text())
        assert 10 <= st["resumed_from"] < 60 and rec["restart_count"] == 1, (s.name, st, rec)
        its = [json.loads(ln)["iteration"] for ln in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert its == sorted(set(its)) and its[-1] == 60
    assert json.loads((specs[0].run_dir / "job.json").read_text())["requeues"] == 1  # checkpoint() ran
    assert "requeues" not in json.loads((specs[1].run_dir / "job.json").read_text())  # no signal, no checkpoint()


@pytest.mark.slurm
def test_cli_submit_without_waiting_then_status(tmp_path, capsys, monkeypatch):
    path = smoke_grid(tmp_path, names=("A",), seeds=(0, 1), iterations=20)
    monkeypatch.setenv("SENSEFLOW_SMOKE_STEP_S", "0.1")
    assert main(["grid", "run", str(path), "--executor", "slurm", "--profile", str(CI_PROFILE), "--job", "smoke",
                 "--no-wait"]) == 0
    assert "submitted SLURM jobs" in capsys.readouterr().out
    assert main(["grid", "run", str(path), "--executor", "slurm", "--profile", str(CI_PROFILE), "--job", "smoke",
                 "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert out.count("  skip ") == 2 and ("queued" in out or "running" in out)   # not submitted twice
    specs = load_grid(path).specs
    t0 = time.time()
    while not all(read_status(s.run_dir).get("state") == "completed" for s in specs):
        assert time.time() - t0 < 120
        time.sleep(0.5)
    assert main(["grid", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 2 and "slurm" in out


@pytest.mark.slurm
def test_sweep_workers_as_slurm_jobs_share_a_journal(tmp_path):
    from optuna.trial import TrialState

    from senseflow.sweep import load_sweep, open_study, run_sweep

    sw = load_sweep({"sweep": "slurm-sweep", "base": "digits-senseflow",
                     "overrides": {"train.iterations": 10, "output.root": str(tmp_path / "results" / "runs")},
                     "params": {"ida.lam": {"type": "float", "low": 0.9, "high": 0.99},
                                "optim.ttur": {"type": "int", "low": 1, "high": 6}},
                     "objectives": [{"metric": "fid_t"}], "trials": 4})
    rep = run_sweep(sw, workers=2, executor="slurm", profile=CI_PROFILE, job=SmokeJob(step_seconds=0.01))
    assert rep.errors == [] and rep.storage.endswith(".journal") and sum(rep.finished_by_worker) == 4
    trials = open_study(sw, rep.storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}


@pytest.mark.slurm
def test_autoexecutor_default_is_slurm_here_so_launch_names_its_cluster(tmp_path):
    import submitit

    assert submitit.AutoExecutor(folder=tmp_path).cluster == "slurm"   # why every executor is named explicitly
    assert make_executor("local", tmp_path).cluster == "local"
    assert os.environ.get("SLURM_JOB_ID") is None


@pytest.mark.slurm
def test_two_task_job_trains_one_run_over_both_tasks(tmp_path):
    """tasks_per_node=2: both tasks of the job join one process group (submitit's environment ->
    torch.distributed, gloo on CPUs) and train the run together with FSDP; rank 0 records it."""
    doc = {"grid": "slurm-dist", "base": "sd35-large-senseflow", "allow_outside_results": True,
           "overrides": {"model.tiny": True, "model.resolution": 32, "train.batch_size": 2, "eval.metrics": [],
                         "train.mixed_precision": "no", "gan.layers": None, "train.iterations": 4, "optim.eight_bit": False,
                         "train.checkpoint_every": 2, "train.threads": 1,
                         "output.root": str(tmp_path / "results" / "runs")},
           "seeds": [0], "variants": [{"name": "two-tasks", "overrides": {}}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    specs = load_grid(path).specs
    profile = load_profile({**yaml.safe_load(CI_PROFILE.read_text()), "tasks_per_node": 2, "mem_gb": 4})
    rep = launch(specs, executor="slurm", profile=profile, poll_s=0.5)
    assert [o.state for o in rep.outcomes] == ["completed"], read_status(specs[0].run_dir)
    st = read_status(specs[0].run_dir)
    assert st["processes"] == 2 and st["parallel"] == "fsdp" and st["iteration"] == 4
    its = [json.loads(ln)["iteration"] for ln in (specs[0].run_dir / "metrics.jsonl").read_text().splitlines()]
    assert its == sorted(set(its)) and its[-1] == 4                    # one writer
