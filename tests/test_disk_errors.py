"""A full disk or a read-only folder in the middle of a run: one line naming the path, exit 2, the last
checkpoint intact and loadable, and the run resumes from it once there is room again."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import senseflow.checkpoint as checkpoint_mod
from senseflow.cli import main
from senseflow.checkpoint import checkpoints

ARGS = ["train", "sd35-large-senseflow", "model.tiny=true", "train.iterations=6", "train.checkpoint_every=2",
        "train.log_every=2", "train.threads=1", "--no-evaluate", "--no-progress"]


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _fail_after(monkeypatch, ok_calls: int, error):
    real, calls = checkpoint_mod.save_file, []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) > ok_calls:
            raise error(path)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint_mod, "save_file", save_file)


def _intact(run):
    ck = checkpoints(run)
    assert [c.name for c in ck] == ["iter_0000002"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    for name in ("generator", "fake_score", "discriminator"):
        assert load_file(str(ck[0] / f"{name}.safetensors"))
    torch.load(ck[0] / "optimizers.pt", weights_only=True)
    assert json.loads((ck[0] / "trainer.json").read_text())["iteration"] == 2


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_write_failure_is_one_line_and_the_run_resumes(kind, tmp_path, capsys, monkeypatch, keep_threads):
    run = tmp_path / "run"
    if kind == "full":  # safetensors reports ENOSPC as its own error type
        error = lambda p: SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')
    else:
        error = lambda p: OSError(errno.EROFS, "Read-only file system", p)
    _fail_after(monkeypatch, 3, error)  # the first checkpoint's three files go through, the second's do not
    assert main([*ARGS, "--run-dir", str(run)]) == 2
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.err, out
    assert str(run / "checkpoints") in lines[0], lines[0]
    assert ("No space left on device" if kind == "full" else "Read-only file system") in lines[0]
    _intact(run)

    monkeypatch.undo()
    assert main([*ARGS, "--run-dir", str(run)]) == 0, capsys.readouterr().err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "trained" and status["iteration"] == 6 and status["resumed_from"] == 2
