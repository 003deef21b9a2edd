"""Optuna sweeps on a cheap stand-in objective (launch.SmokeJob): validation, workers, pruning, resume, show."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from senseflow.cli import main
from senseflow.config import ConfigError
from senseflow.launch import SmokeJob, smoke_metrics
from senseflow.run_folder import read_status
from senseflow.sweep import load_sweep, open_study, run_sweep


def sweep_doc(tmp_path: Path, **extra) -> dict:
    doc = {
        "sweep": "s",
        "base": "digits-senseflow",
        "overrides": {"train.iterations": 20, "train.checkpoint_every": 5, "train.log_every": 5,
                      "output.root": str(tmp_path / "results" / "runs")},
        "seed": 0,
        "params": {"ida.lam": {"type": "float", "low": 0.9, "high": 0.995},
                   "optim.ttur": {"type": "int", "low": 1, "high": 8},
                   "optim.lr_generator": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                   "gan.kind": {"type": "categorical", "choices": ["none", "vfm"]}},
        "objectives": [{"metric": "fid_t", "direction": "minimize"}],
        "trials": 4,
        "sampler": {"kind": "tpe", "seed": 0, "startup_trials": 2},
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(param={}), "unknown top-level key 'param'; did you mean 'params'?"),
    (lambda d: d["params"].update({"ida.lamda": {"type": "float", "low": 0.9, "high": 0.99}}),
     "param 'ida.lamda': unknown key 'ida.lamda'; did you mean 'ida.lam'?"),
    (lambda d: d["params"]["ida.lam"].update(high=1.5), "param 'ida.lam' = 1.5: ida.lam=1.5: Input should be less than or equal to 1"),
    (lambda d: d["params"]["optim.ttur"].update(low=2.5), "param 'optim.ttur': int bounds must be integers"),
    (lambda d: d["params"]["optim.lr_generator"].update(low=0.0), "param 'optim.lr_generator': log=true needs low > 0"),
    (lambda d: d["params"].update({"gan.kind": {"type": "categorical", "choices": ["vfm", "stylegan"]}}),
     "param 'gan.kind' = stylegan: gan.kind='stylegan' is not allowed"),
    (lambda d: d["params"].update({"isg.margin": {"type": "int", "low": 10, "high": 200}}),
     "param 'isg.margin' = 200: isg.margin=200 leaves no room"),
    (lambda d: d.update(objectives=[{"metric": "fid_t", "direction": "down"}]), "direction='down' must be minimize or maximize"),
    (lambda d: d.update(objectives=[{"metric": "fid_t"}, {"metric": "prompt_accuracy", "direction": "maximize"}],
                        pruner={"kind": "median"}, intermediate={"every": 5}), "needs a single objective"),
    (lambda d: d.update(pruner={"kind": "median"}), "needs intermediate.every > 0"),
    (lambda d: d.update(pruner={"kind": "asha"}), "pruner.kind='asha' must be one of none, median, percentile, hyperband"),
])
def test_validation_errors_name_the_param_and_key(tmp_path, change, expected):
    doc = sweep_doc(tmp_path)
    change(doc)
    with pytest.raises(ConfigError) as e:
        load_sweep(write(tmp_path, doc))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_trial_config_is_an_ordinary_run(tmp_path):
    sw = load_sweep(sweep_doc(tmp_path))
    cfg = sw.config_for({"ida.lam": 0.93, "optim.ttur": 3, "optim.lr_generator": 2e-4, "gan.kind": "none"})
    assert (cfg.ida.lam, cfg.optim.ttur, cfg.gan.kind, cfg.train.iterations, cfg.output.grid) == (0.93, 3, "none", 20, "sweep-s")
    assert cfg.name == "lam=0.93, ttur=3, lr_generator=0.0002, kind=none"
    assert sw.run_dir(cfg) == tmp_path / "results" / "runs" / "sweep-s" / cfg.identity_hash()
    assert sw.storage_for("local").endswith("results/sweeps/s.db") and sw.storage_for("slurm").endswith("s.journal")


def test_two_local_workers_share_the_study_and_show_reports_the_best(tmp_path, capsys):
    sw = load_sweep(write(tmp_path, sweep_doc(tmp_path, trials=6)))
    rep = run_sweep(sw, workers=2, executor="local", job=SmokeJob(step_seconds=0.01))
    assert rep.errors == [] and sum(rep.finished_by_worker) == 6 and len(rep.finished_by_worker) == 2
    study = open_study(sw, rep.storage)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # every trial is a run folder with the objective in eval.json
        st = read_status(Path(t.user_attrs["run_dir"]))
        assert st["state"] == "completed" and st["grid"] == "sweep-s"
        cfg = sw.config_for(t.params)
        assert t.value == pytest.approx(smoke_metrics(cfg)["fid_t"]) and t.user_attrs["run_id"] == cfg.identity_hash()
    assert main(["sweep", "show", str(sw.path)]) == 0
    out = capsys.readouterr().out
    best = min(trials, key=lambda t: t.value)
    assert "complete: 6" in out and "best 5 by fid_t (minimize)" in out and best.user_attrs["run_id"] in out
    assert "importance for fid_t: " in out and "ida.lam" in out.split("importance for fid_t: ")[1]
    # the study already holds its trials: a second call runs nothing
    assert main(["sweep", str(sw.path), "--workers", "2", "--job", "smoke", "--no-sync"]) == 0
    assert "already holds 6 trials" in capsys.readouterr().out
    assert len(open_study(sw, rep.storage).get_trials()) == 6


def test_pruning_reports_intermediate_values_and_stops_bad_trials(tmp_path):
    doc = sweep_doc(tmp_path, trials=8, pruner={"kind": "median", "startup_trials": 2, "warmup_steps": 0},
                    intermediate={"source": "eval", "metric": "fid_t", "every": 5},
                    sampler={"kind": "random", "seed": 3})
    sw = load_sweep(doc)
    rep = run_sweep(sw, executor="debug", job=SmokeJob(step_seconds=0.0))
    study = open_study(sw, rep.storage)
    states = [t.state for t in study.get_trials()]
    assert len(states) == 8 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.intermediate_values for t in study.get_trials())
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner stopped no trial"
    for t in pruned:
        st = read_status(Path(t.user_attrs["run_dir"]))
        assert st["state"] == "stopped" and "pruned by optuna" in st["reason"] and st["iteration"] < 20


def test_interrupted_trial_is_enqueued_again_and_its_run_resumes(tmp_path):
    sw = load_sweep(sweep_doc(tmp_path, trials=2))
    storage = sw.storage_for("local")
    study = open_study(sw, storage, create=True)
    trial = study.ask()  # a worker asked a trial, started training, and was killed
    params = {p.key: p.suggest(trial) for p in sw.params}
    cfg = sw.config_for(params)
    run_dir = sw.run_dir(cfg).resolve()
    trial.set_user_attr("run_dir", str(run_dir))
    SmokeJob(step_seconds=0.0)(cfg, run_dir, stop_after=10)
    run_sweep(sw, executor="debug", job=SmokeJob(step_seconds=0.0))
    trials = open_study(sw, storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == params and trials[1].user_attrs["resumes_trial"] == 0
    assert read_status(run_dir)["resumed_from"] == 10 and read_status(run_dir)["state"] == "completed"


def test_a_trial_that_just_finished_its_run_is_not_reclaimed_before_its_tell(tmp_path, monkeypatch):
    """A worker releases its run's lock before it tells the study; a worker starting in that gap must not take
    the trial for an interrupted one (it did: the first worker's tell then failed on a finished trial)."""
    import senseflow.sweep as sweep_mod
    from senseflow.grid import RUN_LOCK, run_lock

    sw = load_sweep(sweep_doc(tmp_path, trials=3))
    storage = str(Path(sw.storage_for("local")).resolve())
    reclaimed = []

    class ReclaimAfterRelease(run_lock):
        def release(self):
            super().release()
            if self.path.name == RUN_LOCK:  # another worker starts now
                other = open_study(sw, storage, worker=1)
                with sweep_mod.file_lock(sweep_mod.lock_path_for(storage, sw)):
                    reclaimed.extend(sweep_mod.reclaim_interrupted(other, sweep_mod.trial_locks_dir(storage, sw)))

    monkeypatch.setattr(sweep_mod, "run_lock", ReclaimAfterRelease)
    rep = run_sweep(sw, executor="debug", job=SmokeJob(step_seconds=0.0))
    trials = open_study(sw, rep.storage).get_trials()
    assert reclaimed == [] and [t.state for t in trials] == [TrialState.COMPLETE] * 3


def test_a_failed_worker_is_reported_by_its_exception_not_its_log_path(tmp_path):
    import submitit

    from senseflow.sweep import failure_line

    job = submitit.LocalExecutor(folder=tmp_path / "%j").submit(int, "x")  # raises in the job's process
    with pytest.raises(Exception) as e:
        job.result()
    assert "_log.out" in str(e.value).splitlines()[-1]
    assert failure_line(e.value) == "ValueError: invalid literal for int() with base 10: 'x'"
    assert failure_line(RuntimeError("one\ntwo")) == "two" and failure_line(RuntimeError()) == "RuntimeError"


def test_multi_objective_pareto_front(tmp_path, capsys):
    doc = sweep_doc(tmp_path, trials=3, objectives=[{"metric": "fid_t", "direction": "minimize"},
                                                     {"metric": "prompt_accuracy", "direction": "maximize"}])
    doc["params"]["isg.margin"] = {"type": "int", "low": 5, "high": 50, "step": 5}
    path = write(tmp_path, doc)
    assert main(["sweep", str(path), "--executor", "debug", "--job", "smoke", "--no-sync"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "importance for fid_t" in out and "importance for prompt_accuracy" in out
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'results' / 'sweeps' / 's.db'}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    assert len(study.best_trials) >= 1


def test_journal_storage_for_cluster_workers(tmp_path):
    sw = load_sweep(sweep_doc(tmp_path, trials=2))
    journal = str(tmp_path / "shared" / "s.journal")
    rep = run_sweep(sw, executor="debug", job=SmokeJob(step_seconds=0.0), storage=journal)
    assert Path(journal).is_file() and rep.finished_by_worker == [2]
    assert main(["sweep", "show", str(write(tmp_path, sweep_doc(tmp_path))), "--storage", journal]) == 0


@pytest.mark.parametrize("name", ["digits-ida-isg.yaml", "digits-pareto.yaml"])
def test_shipped_sweeps_load(name):
    sw = load_sweep(Path(__file__).resolve().parents[1] / "experiments" / "sweeps" / name)
    keys = {p.key for p in sw.params}
    assert {"ida.lam", "optim.ttur", "isg.weight", "gan.weight", "optim.lr_generator"} <= keys
    assert sw.trials >= 8 and sw.storage_for("local").endswith(f"results/sweeps/{sw.name}.db")
