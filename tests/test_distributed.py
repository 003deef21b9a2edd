"""Multi-process training on this CPU machine: 2 processes (torch.distributed.run, gloo) with FSDP2.

What must hold (senseflow.parallel): the gradients every optimizer steps with equal the average of the
per-rank gradients of an unsharded model (G, F and D; FSDP and DDP layouts; VFM and DMD2 heads), a
2-process run equals a 1-process run when both ranks see the same data, and its checkpoints (full
tensors) resume in one process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from senseflow import config as C
from senseflow.components import build_components
from senseflow.checkpoint import checkpoints
from senseflow.train import train

WORKER = Path(__file__).with_name("dist_worker.py")
TINY = ["model.tiny=true", "model.resolution=32", "train.batch_size=2", "eval.metrics=[]",
        "train.mixed_precision=no", "gan.layers=null", "train.log_every=1", "gan.omega=one", "gan.weight=1.0",
        "optim.eight_bit=false", "model.dtype=float32", "train.trainable_dtype=float32"]


def torchrun(run_dir: Path, preset: str, mode: str, overrides: list[str], stop_after: int | None = None,
             nproc: int = 2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
           str(run_dir), preset, mode] + ([str(stop_after)] if stop_after is not None else []) + ["--", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out.stdout


@pytest.mark.parametrize("preset,strategy", [("sd35-large-senseflow", "fsdp"), ("sd35-large-senseflow", "ddp"),
                                             ("sd35-large-dmd2", "fsdp"), ("flux-dev-senseflow", "fsdp"),
                                             ("sdxl-dmd2", "fsdp")])
def test_synchronised_gradients_are_the_average_of_per_rank_gradients(tmp_path, preset, strategy):
    torchrun(tmp_path, preset, "grads", TINY + ["optim.ttur=1", "optim.grad_clip=1e9", f"train.parallel={strategy}"])
    report = json.loads((tmp_path / "grads.json").read_text())
    assert set(report) == {"generator", "fake_score", "discriminator"}
    for part, r in report.items():
        assert r["same_names"] and r["params"] > 0, (part, r)
        # the two ranks' own gradients differ, and the synchronised one is their mean
        assert r["ranks_differ_by"] > 1e-4 * r["scale"], (part, r)
        assert r["max_abs_diff"] <= 1e-5 * r["scale"] + 1e-9, (part, r)


def _weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    ck = checkpoints(run_dir)[-1]
    return {n: load_file(str(ck / f"{n}.safetensors")) for n in ("generator", "fake_score", "discriminator")}


def _assert_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=atol, rtol=1e-4), (part, k)


def test_two_process_fsdp_run_matches_one_process_and_resumes_in_one_process(tmp_path):
    over = TINY + ["train.iterations=4", "optim.ttur=2", "train.checkpoint_every=2"]
    cfg = C.resolve("sd35-large-senseflow", over)
    single = train(cfg, tmp_path / "single", build_components(cfg), progress=False)
    assert single.state == "completed"

    out = torchrun(tmp_path / "fsdp", "sd35-large-senseflow", "same", over)
    assert "rank 0/2: completed 4" in out and "rank 1/2: completed 4" in out
    status = json.loads((tmp_path / "fsdp" / "status.json").read_text())
    assert status["processes"] == 2 and status["parallel"] == "fsdp"
    rows = [json.loads(x) for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]          # written once, by rank 0
    _assert_close(_weights(tmp_path / "single"), _weights(tmp_path / "fsdp"))

    # stop a 2-process run half way; its full-tensor checkpoint resumes in this one process
    torchrun(tmp_path / "split", "sd35-large-senseflow", "same", over, stop_after=2)
    assert json.loads((tmp_path / "split" / "status.json").read_text())["state"] == "stopped"
    resumed = train(cfg, tmp_path / "split", build_components(cfg), progress=False)
    assert resumed.state == "completed" and resumed.iteration == 4
    _assert_close(_weights(tmp_path / "single"), _weights(tmp_path / "split"))


def test_per_rank_data_moves_the_two_process_run_away_from_one_process(tmp_path):
    """The normal per-rank data streams: the run completes, and (unlike the same-data run above) it is
    not the one-process run, so the equality there is not an accident of identical work."""
    over = TINY + ["train.iterations=2", "optim.ttur=1"]
    cfg = C.resolve("sd35-large-senseflow", over)
    train(cfg, tmp_path / "single", build_components(cfg), progress=False)
    torchrun(tmp_path / "own", "sd35-large-senseflow", "own", over + ["train.parallel=ddp"])
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "own")
    assert any(not torch.allclose(a["generator"][k], b["generator"][k], atol=1e-6) for k in a["generator"])


def test_shard_group_must_divide_the_world(tmp_path):
    env_out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
         str(tmp_path), "sd35-large-senseflow", "own", "--", *TINY, "train.iterations=1", "train.shard_group=3"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert env_out.returncode != 0
    assert "train.shard_group=3 does not divide the 2 processes" in env_out.stdout + env_out.stderr


@pytest.mark.parametrize("preset,strategy", [("sd35-large-senseflow", "fsdp"), ("sd35-large-senseflow", "ddp"),
                                             ("flux-dev-senseflow", "fsdp")])
def test_two_process_run_uses_the_one_process_dtypes(tmp_path, preset, strategy):
    """One precision policy in every layout: a bf16 teacher, G and F in train.trainable_dtype (fp32; bf16 in
    the FLUX preset), fp32 discriminator heads, in one process and in two."""
    over = [o for o in TINY if not o.startswith(("model.dtype=", "train.trainable_dtype="))] + [
        "model.dtype=bfloat16", "train.iterations=1", "optim.ttur=1", f"train.parallel={strategy}"]
    cfg = C.resolve(preset, over)
    assert cfg.train.trainable_dtype == ("bfloat16" if preset.startswith("flux") else "float32")
    train(cfg, tmp_path / "single", build_components(cfg), progress=False)
    torchrun(tmp_path / "two", preset, "own", over)
    one, two = (json.loads((tmp_path / d / "status.json").read_text()) for d in ("single", "two"))
    assert two["processes"] == 2 and two["parallel"] == strategy
    assert one["precision"] == two["precision"]
    trainable = cfg.train.trainable_dtype
    assert (one["precision"]["generator"], one["precision"]["teacher"]) == (trainable, "bfloat16")
    assert one["precision"]["discriminator_heads"] == "float32"
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "two")
    assert {(p, k): v.dtype for p in a for k, v in a[p].items()} == {(p, k): v.dtype for p in b for k, v in b[p].items()}
    assert {v.dtype for v in a["generator"].values()} == {getattr(torch, trainable)}
