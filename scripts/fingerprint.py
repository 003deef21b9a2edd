"""Behaviour fingerprint: train every digits ablation configuration for a few iterations through the
CLI and print SHA-256s of the final checkpoint's tensors, of the logged metrics (without wall time) and of
the evaluation's metrics (with --evaluate).

A refactor that changes no behaviour leaves every line identical:
    python scripts/fingerprint.py > before.txt; ...refactor...; python scripts/fingerprint.py | diff before.txt -
Uses only the `senseflow train` command line and the run folder's files, so it survives internal moves.
Needs the digits world (`senseflow world digits build`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

CELLS = {
    "DMD2": ["digits-dmd2"],
    "+IDA+ISG (DMD2 head)": ["digits-dmd2", "ida.enabled=true", "isg.enabled=true"],
    "SenseFlow": ["digits-senseflow"],
    "SenseFlow w/o IDA": ["digits-senseflow", "ida.enabled=false"],
    "SenseFlow w/o ISG": ["digits-senseflow", "isg.enabled=false"],
}


def digest(run_dir: Path) -> tuple[str, str]:
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    h = hashlib.sha256()
    for f in sorted(ckpts[-1].glob("*.safetensors")):
        for name, t in sorted(load_file(str(f)).items()):
            h.update(f"{f.name}/{name}".encode())
            h.update(t.float().numpy().tobytes())
    m = hashlib.sha256()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time", None)
        m.update(json.dumps(rec, sort_keys=True).encode())
    return h.hexdigest()[:16], m.hexdigest()[:16]


def eval_digest(run_dir: Path) -> str:
    evals = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    return hashlib.sha256(json.dumps([e["metrics"] for e in evals], sort_keys=True).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--evaluate", action="store_true", help="also evaluate each run (about 30 s a run)")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("senseflow")
    for name, (preset, *over) in CELLS.items():
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cmd = [str(exe), "train", preset, *over, f"train.iterations={args.iterations}",
                   "train.log_every=1", f"train.checkpoint_every={args.iterations}",
                   "--run-dir", str(run_dir), "--no-progress", "--evaluate" if args.evaluate else "--no-evaluate"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            w, m = digest(run_dir)
            e = f"  eval {eval_digest(run_dir)}" if args.evaluate else ""
            print(f"{name:24s} weights {w}  metrics {m}{e}", flush=True)


if __name__ == "__main__":
    main()
