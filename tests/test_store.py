"""Results store: atomic run files, concurrent writers, idempotent DuckDB sync, corrupt-file tolerance."""

import json
import multiprocessing as mp
import os
import time
import warnings

import pytest

from evals import store
from senseflow.run_folder import State, write_status


def _writer(results_root: str, i: int, barrier) -> None:
    """One 'job': a full run folder written while 31 others do the same."""
    grid = "g"
    run_id = f"run{i:02d}"
    barrier.wait(timeout=60)
    run = store.init_run(results_root, grid, run_id, {"name": f"v{i % 4}", "train": {"seed": i // 4}, "lr": 1e-4},
                         variant=f"v{i % 4}", seed=i // 4)
    write_status(run, State.RUNNING, iteration=0, started=time.time())
    for it in range(1, 11):
        store.log_metrics(run, it, {"loss": 1.0 / it + i, "grad_norm": float(it), "nested": {"a": it}}, time=0.1 * it)
    # a shared file appended by every job at once: lines must never interleave
    store.append_jsonl(os.path.join(results_root, "shared.jsonl"), {"i": i, "pad": "x" * 2000})
    store.record_eval(run, iteration=5, label="mid", metrics={"fid_t": 20.0 + i}, intervals={"fid_t": [19.0, 21.0 + i]},
                      num_samples=64)
    store.record_eval(run, iteration=10, label="final", metrics={"fid_t": 10.0 + i, "clip_score": 0.3},
                      intervals={"fid_t": [9.0, 11.0 + i]}, num_samples=64, checkpoint="checkpoints/iter_0000010")
    write_status(run, State.COMPLETED, iteration=10, finished=time.time())


def _all_rows(db):
    out = {}
    for t, order in (("runs", "run_id"), ("train_metrics", "run_id, iteration, name"),
                     ("eval_metrics", "run_id, iteration, label, name")):
        cols, rows = store.query(db, f"SELECT * EXCLUDE (grid) FROM {t} ORDER BY {order}")
        if t == "runs":  # run_dir / status hold absolute paths and timestamps: stable, but compare the rest
            keep = [c for c in cols if c not in ("status",)]
            rows = [tuple(r[cols.index(c)] for c in keep) for r in rows]
        out[t] = rows
    return out


def test_concurrent_writers_sync_idempotent_rebuild(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(32)
    procs = [ctx.Process(target=_writer, args=(str(root), i, barrier)) for i in range(32)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 32

    lines = (root / "shared.jsonl").read_text().splitlines()
    assert sorted(json.loads(ln)["i"] for ln in lines) == list(range(32))

    db = root / "senseflow.duckdb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is broken here: no warning allowed
        c1 = store.sync(root, db)
    assert c1["runs"] == 32
    assert c1["train_metrics"] == 32 * 10 * 3
    assert c1["eval_metrics"] == 32 * 3
    assert c1["skipped_files"] == 0 and c1["skipped_lines"] == 0

    cols, rows = store.query(db, "SELECT run_id, state, variant, seed, iteration, json_extract(config, '$.lr')::DOUBLE, "
                                 "started IS NOT NULL AND finished >= started FROM runs ORDER BY run_id")
    assert len(rows) == 32
    assert all(r[1] == "completed" and r[4] == 10 and r[5] == pytest.approx(1e-4) and r[6] for r in rows)
    assert rows[7][2:4] == ("v3", 1)
    _, r = store.query(db, "SELECT value FROM train_metrics WHERE run_id = ? AND name = ? AND iteration = ?",
                       ["run07", "loss", 4])
    assert r == [(pytest.approx(0.25 + 7),)]
    _, r = store.query(db, "SELECT count(*) FROM train_metrics WHERE name = 'nested/a'")
    assert r == [(320,)]
    _, r = store.query(db, "SELECT value, lo, hi, num_samples, checkpoint FROM eval_metrics "
                           "WHERE run_id = $rid AND label = 'final' AND name = 'fid_t'", {"rid": "run05"})
    assert r == [(15.0, 9.0, 16.0, 64, "checkpoints/iter_0000010")]

    before = _all_rows(db)
    c2 = store.sync(root, db)
    assert c2 == c1
    assert _all_rows(db) == before

    db.unlink()
    c3 = store.sync(root, db)
    assert c3 == c1
    assert _all_rows(db) == before


def test_sync_tolerates_broken_files(tmp_path):
    root = tmp_path / "results"
    good = store.init_run(root, "g", "good", {"name": "a"}, variant="a", seed=0)
    store.log_metrics(good, 1, {"loss": 2.0}, time=1.0)
    store.log_metrics(good, 1, {"loss": 1.5}, time=1.2)  # re-logged after a resume: last one wins
    store.log_metrics(good, 2, {"loss": float("nan"), "note": "text is ignored"}, time=2.0)
    with open(good / store.METRICS_FILE, "a") as fh:
        fh.write('{"iteration": 3, "loss": 0.')  # half-written last line
    store.record_eval(good, iteration=2, label="final", metrics={"fid": 3.0})
    store.record_eval(good, iteration=2, label="final", metrics={"fid": 2.0})  # replaces the first

    bad = root / "runs" / "g" / "bad"
    bad.mkdir(parents=True)
    (bad / "status.json").write_text('{"run_id": "bad", "state": "runn')
    (bad / "config.yaml").write_text("a: [1, 2\n")
    (bad / "eval.json").write_text("[1, 2, 3]")
    (bad / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1}\nnot json\n{"time": 3}\n')
    (root / "runs" / "g" / "empty").mkdir()  # no run files: not a run

    with pytest.warns(UserWarning):
        counts = store.sync(root)
    assert counts["runs"] == 2
    assert counts["skipped_files"] == 3 and counts["skipped_lines"] == 3
    db = root / store.DEFAULT_DB
    _, rows = store.query(db, "SELECT run_id, state, variant, iteration FROM runs ORDER BY run_id")
    assert rows == [("bad", None, None, 1), ("good", "pending", "a", 0)]
    _, rows = store.query(db, "SELECT iteration, value FROM train_metrics WHERE run_id = 'good' ORDER BY iteration")
    assert rows[0] == (1, 1.5) and rows[1][0] == 2 and rows[1][1] != rows[1][1]  # NaN kept
    _, rows = store.query(db, "SELECT name, value FROM eval_metrics")
    assert rows == [("fid", 2.0)]


def test_nested_grids_and_run_files_inside_runs(tmp_path):
    write_status(tmp_path / "runs" / "grid1" / "abc", State.PENDING, run_id="abc", grid="grid1")
    nested = store.init_run(tmp_path, "digits/ablation", "r1", {"x": 1}, variant="v", seed=0)
    assert nested == tmp_path / "runs" / "digits" / "ablation" / "r1"
    (nested / "checkpoints" / "iter_1").mkdir(parents=True)
    (nested / "checkpoints" / "iter_1" / "status.json").write_text("{}")  # inside a run: not a run
    assert store.sync(tmp_path)["runs"] == 2  # grid1/abc and digits/ablation/r1
    _, rows = store.query(tmp_path / store.DEFAULT_DB, "SELECT grid, run_id FROM runs ORDER BY grid")
    assert rows == [("digits/ablation", "r1"), ("grid1", "abc")]
    with pytest.raises(FileNotFoundError, match="sync"):
        store.query(tmp_path / "none.duckdb", "SELECT 1")
