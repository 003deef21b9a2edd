"""`senseflow bench` runs and writes its figures (never a timing assertion: benchmarks are not tests)."""

import json

import pytest
import torch

from senseflow.cli import main

HEADER = {"benchmark", "date", "machine", "threads", "commit", "load_average_before", "load_average_after",
          "settings", "rows"}


def _read(path):
    d = json.loads(path.read_text())
    assert HEADER <= set(d), set(d) ^ HEADER
    assert d["machine"]["torch"] == torch.__version__ and d["machine"]["cpu"]
    return d


def test_iteration_and_sampling_write_their_figures(tmp_path, capsys):
    rc = main(["bench", "iteration", "sampling", "--quick", "--world", "sd3", "--world", "flux", "--out", str(tmp_path)])
    assert rc == 0
    it = _read(tmp_path / "iteration.json")
    assert [(r["world"], r["method"]) for r in it["rows"]] == [("sd3", "senseflow"), ("flux", "senseflow"),
                                                               ("sd3", "dmd2"), ("flux", "dmd2")]
    for r in it["rows"]:
        assert r["generator_iterations"] == 1 and r["critic_iterations"] == 1
        for kind in ("generator", "critic", "ttur_mean"):
            assert r["iteration_ms"][kind] > 0 and r["limit_ms"][kind] > 0 and r["efficiency"][kind] > 0
        parts = r["limit_parts_ms_ttur_mean"]
        assert {"G forward+backward", "teacher", "F forward+backward"} <= set(parts)
        assert parts["optimizer+clip"] > 0
        assert set(r["additions"]) >= {"ida_share", "isg_share", "isg_over_passes", "disc_share", "backsim_share"}
    sf = [r for r in it["rows"] if r["method"] == "senseflow"]
    assert all(r["ida"] and r["isg"] and r["additions"]["isg_over_passes"] is not None for r in sf)
    sa = _read(tmp_path / "sampling.json")
    by = {r["world"]: r for r in sa["rows"]}
    assert by["sd3"]["teacher_evaluations"] == 100 and by["sd3"]["limit"] == 25.0
    assert by["flux"]["teacher_guidance"] == "embedded" and by["flux"]["limit"] == 12.5
    assert all(r["speedup"] > 0 for r in sa["rows"])
    capsys.readouterr()
    assert main(["bench", "--table", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| sd3 | senseflow |" in table and "| flux | 2 |" in table and "`sampling` on cpu:" in table


def test_recorder_sees_every_network_and_leaves_no_trace():
    from senseflow.bench import setups
    from senseflow.bench.passes import PassRecorder
    from senseflow.distill import Distiller, step_rng

    cfg = setups.run_config("sd3", "senseflow", ["generator.backsim_prob=1.0"], 2, 1)
    comps = setups.build("sd3", cfg, tiny=True).components
    b = comps.bundle
    d = Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table, make_discriminator=comps.make_discriminator)
    flags = [p.requires_grad for p in d.parameters()]
    rec = PassRecorder().attach(d)
    batch = comps.data.batch(0, 2, step_rng(0, 0, stream=2))
    rec.start()
    d.step(0, batch)
    rec.stop()
    names = {(p.name, p.grad) for p in rec.passes}
    assert {("generator", True), ("teacher", False), ("fake_score", False), ("fake_score", True),
            ("discriminator", True), ("vae_decode", True)} <= names
    assert any("isg" in p.tags and p.name == "teacher" for p in rec.passes)
    assert rec.in_place["optimizer"] > 0 and rec.in_place["ida"] > 0
    rows = rec.replay()
    assert len(rows) == len(rec.passes) and all(r["seconds"] > 0 for r in rows)
    assert any(r["name"] == "generator" and r["backward"] for r in rows)
    assert not any(r["name"] == "teacher" and r["backward"] for r in rows)
    assert [p.requires_grad for p in d.parameters()] == flags
    assert all(p.grad is None for p in d.parameters())
    import senseflow.bench.passes as passes_mod

    reads = []
    real_now = passes_mod.now
    passes_mod.now = lambda device: reads.append(device) or real_now(device)
    try:
        d.step(1, batch)  # attached but not recording: no clock reads (each one syncs a GPU)
    finally:
        passes_mod.now = real_now
    assert reads == []
    rec.detach()
    assert "forward" not in vars(d.generator) and "_clip" not in vars(d)
    d.step(2, batch)  # still trains without the recorder


def test_scaling_fits_an_exponent(tmp_path):
    assert main(["bench", "scaling", "--quick", "--world", "flux", "--out", str(tmp_path)]) == 0
    rows = _read(tmp_path / "scaling.json")["rows"]
    assert [(r["world"], r["axis"]) for r in rows] == [("flux", "batch"), ("flux", "resolution")]
    for r in rows:
        assert [p[r["axis"]] for p in r["points"]] in ([1, 2], [16, 32])
        assert isinstance(r["time_exponent"], float) and all(p["peak_rss_mib"] > 0 for p in r["points"])


def test_a_failing_configuration_keeps_the_others_figures(tmp_path, capsys, monkeypatch):
    """One configuration that raises (a CUDA error, say) is written as a row with its error, the others keep
    their figures, and the command exits 1 naming it."""
    from senseflow.bench import iteration

    real = iteration.time_iterations

    def flaky(st, **kw):
        if st.world == "flux":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real(st, **kw)

    monkeypatch.setattr(iteration, "time_iterations", flaky)
    assert main(["bench", "iteration", "--quick", "--world", "sd3", "--world", "flux", "--method", "dmd2",
                 "--out", str(tmp_path)]) == 1
    rows = _read(tmp_path / "iteration.json")["rows"]
    assert [("error" in r, r["world"]) for r in rows] == [(False, "sd3"), (True, "flux")]
    assert rows[1]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert rows[0]["efficiency"]["ttur_mean"] > 0
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("senseflow bench: failed rows (written with their error): iteration flux "
                                           "dmd2: RuntimeError: CUDA error: an illegal memory access was encountered")
    assert main(["bench", "--table", "--out", str(tmp_path)]) == 0
    assert "| flux | dmd2 | failed: RuntimeError" in capsys.readouterr().out


def test_replay_runs_each_pass_under_the_autocast_it_ran_under(monkeypatch):
    """On a GPU the step runs under bf16 autocast; a pass timed alone must run under it too (here: the CPU's)."""
    from senseflow.bench import setups
    from senseflow.bench.passes import PassRecorder

    cfg = setups.run_config("sd3", "senseflow", [], 2, 1)
    st = setups.build("sd3", cfg, tiny=True)
    d = setups.distiller(st)
    seen = []
    fwd = d.teacher.forward
    monkeypatch.setattr(d.teacher, "forward", lambda *a, **k: (seen.append(torch.is_autocast_enabled("cpu")),
                                                               fwd(*a, **k))[1])
    rec = PassRecorder().attach(d)
    rec.start()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d.step(0, setups.batch(st, 0))
    rec.stop()
    assert rec.passes and all(p.autocast == ("cpu", torch.bfloat16) for p in rec.passes)
    n = len(seen)
    assert n and all(seen)
    rec.replay()  # outside any autocast
    assert len(seen) > n and all(seen[n:])
    rec.detach()


def test_metric_throughput_row():
    from senseflow.bench.metrics import time_metrics

    rows = time_metrics(batch=1, repeats=1, size=64, names=["fid_inception"], log=lambda m: None)
    assert [r["metric"] for r in rows] == ["fid_inception"] and rows[0]["images_per_second"] > 0


NO_GPU = [] if torch.cuda.is_available() else [
    (["bench", "iteration", "--device", "cuda"], "no CUDA GPU is visible")]
ON_GPU = [(["bench", "step", "--device", "cuda"], "benchmark 'step' runs on the CPU only"),
          (["bench", "iteration", "--device", "cuda", "--world", "digits"], "--world digits runs on the CPU only")]


def test_main_job_split_adds_up(tmp_path):
    """The main-job benchmark's arithmetic on a finished job's files (the job itself takes 18 minutes)."""
    import json

    from senseflow.bench.main_job import split
    from senseflow.bench.report import markdown

    (tmp_path / "results").mkdir()
    steps = [("install", 100), ("world build", 300), ("reference rows", 8), ("grid", 600), ("table", 4),
             ("plots", 4), ("report", 4)]
    (tmp_path / "results" / "main-job.json").write_text(json.dumps(
        {"grid": "digits-ablation", "seconds": 1020, "steps": [{"step": k, "seconds": v} for k, v in steps]}))
    for i, (method, state) in enumerate([("senseflow", "completed"), ("dmd2", "completed"),
                                         ("reference", "completed"), ("dmd2", "failed")]):
        d = tmp_path / "results" / "runs" / "digits-ablation" / f"r{i}"
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"run_id": f"r{i}", "method": method, "state": state, "started": 5.0,
                                                   "finished": 650.0, "train_seconds": 500.0, "eval_seconds": 100.0}))
        (d / "job.json").write_text(json.dumps({"started": 0.0}))
    r = split(tmp_path)
    assert r["runs"] == 2 and r["grid_sums"] == {"training": 1000.0, "evaluation": 200.0,
                                                 "start-up and bookkeeping": 100.0}
    w = r["wall_split"]
    assert w["world build"] == 300 and w["training"] == pytest.approx(600 * 1000 / 1300, abs=0.1)
    assert sum(w.values()) == pytest.approx(1020, abs=0.2) and w["bookkeeping"] == pytest.approx(
        100 + 8 + 12 + 600 * 100 / 1300, abs=0.2)
    (tmp_path / "main-job.json").write_text(json.dumps(
        {"benchmark": "main-job", "date": "d", "machine": {"cpu": "c", "cores": 2, "torch": "t", "cuda": None},
         "threads": 1, "commit": "abc", "load_average_before": [1.0], "load_average_after": [2.0],
         "settings": {}, "rows": [{"commit": "abc", **r}]}))
    assert "| abc | 1020 | 300 | 462 | 92 | 166 |" in markdown(tmp_path)


@pytest.mark.parametrize("args, words", [(["bench", "nope"], "benchmark 'nope'"),
                                         (["bench", "main-job", "--quick"], "has no --quick form"),
                                         (["bench", "iteration", "--world", "mars"], "--world 'mars'"),
                                         (["bench", "iteration", "--method", "gan"], "--method 'gan'"),
                                         (["bench", "iteration", "--device", "tpu"], "--device 'tpu'"),
                                         (["bench", "iteration", "--resolution", "128"], "--resolution 128"),
                                         (["bench", "sampling", "--resolution", "30"], "--resolution 30"),
                                         *(NO_GPU or ON_GPU)])
def test_bad_input_is_one_line(args, words, tmp_path, capsys):
    assert main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_allocator_settings_apply_once_on_glibc():
    import platform
    import sys

    from senseflow.allocator import keep_freed_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc and keep_freed_memory() is glibc
