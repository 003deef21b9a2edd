"""The run folder's owner: one state vocabulary, status.json merged atomically under a lock, one run path."""

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from senseflow import run_folder
from senseflow.errors import UserError
from senseflow.run_folder import State, read_status, run_path, save_png, update_status, write_status


def test_status_rules_and_atomic_json(tmp_path):
    run = tmp_path / "runs" / "grid1" / "abc"
    assert read_status(run) == {}
    st = write_status(run, State.PENDING, run_id="abc", grid="grid1", variant="x", seed=3)
    assert (st["run_id"], st["grid"], st["state"]) == ("abc", "grid1", "pending")
    write_status(run, "running", iteration=5, started=1.0)
    st = write_status(run, State.RUNNING, iteration=6)
    assert st["started"] == 1.0 and st["variant"] == "x" and st["iteration"] == 6
    st = write_status(run, State.DIVERGED, reason="loss is NaN at 7", iteration=7, finished=2.0)
    assert read_status(run) == st and st["reason"] == "loss is NaN at 7"
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    with pytest.raises(ValueError, match="state='bogus'"):
        write_status(run, "bogus")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    (run / "status.json").write_text('{"state": "runn')  # cut short: read as no status
    assert read_status(run) == {}


def test_states_are_the_text_status_json_holds():
    assert [s.value for s in State] == ["pending", "running", "stopped", "trained", "evaluating", "completed",
                                        "failed", "diverged"]
    assert "completed" in run_folder.TERMINAL and "stopped" not in run_folder.TERMINAL
    assert State.COMPLETED == "completed" and f"{State.FAILED}" == "failed"
    assert json.dumps({"state": State.RUNNING}) == '{"state": "running"}'


def test_identity_from_the_config(tmp_path):
    cfg = SimpleNamespace(name="w/o ISG", method="senseflow", output=SimpleNamespace(grid="g"),
                          train=SimpleNamespace(seed=4))
    st = write_status(tmp_path / "r1", State.RUNNING, cfg, iteration=3, device=np.float32(1.5))
    assert {k: st[k] for k in ("run_id", "grid", "variant", "seed", "method", "state", "iteration")} == {
        "run_id": "r1", "grid": "g", "variant": "w/o ISG", "seed": 4, "method": "senseflow", "state": "running",
        "iteration": 3}
    assert st["code_version"] and st["host"] and st["device"] == 1.5


def test_concurrent_updates_keep_every_field(tmp_path):
    run = tmp_path / "r"

    def writer(i: int) -> None:
        for j in range(20):
            update_status(run, **{f"w{i}_{j}": j})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_status(run)) == 4 * 20


def test_run_path(tmp_path):
    assert run_path(tmp_path, "digits/ablation", "r1") == tmp_path / "digits" / "ablation" / "r1"
    with pytest.raises(UserError, match="one path component"):
        run_path(tmp_path, "g", "a/b")
    with pytest.raises(UserError, match="relative name"):
        run_path(tmp_path, "../g", "a")


def test_save_png_enlarges_previews_only(tmp_path):
    img = np.arange(16 * 32, dtype=np.uint8).reshape(16, 32, 1)
    save_png(tmp_path / "a" / "exact.png", img)
    save_png(tmp_path / "preview.png", img, min_side=run_folder.PREVIEW_SIDE)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "exact.png")), img[..., 0])
    assert Image.open(tmp_path / "preview.png").size == (256, 128)
    with pytest.raises(TypeError, match="uint8"):
        save_png(tmp_path / "f.png", img.astype(np.float32))
