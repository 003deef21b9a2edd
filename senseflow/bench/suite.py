"""The named benchmarks of `senseflow bench`, their settings and the figures each writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from senseflow.bench import record, setups
from senseflow.errors import UserError


@dataclass
class Settings:
    worlds: tuple[str, ...] = setups.WORLDS
    methods: tuple[str, ...] = ("senseflow", "dmd2")
    threads: int = 1
    iterations: int = 3          # timed (generator, critic-only) pairs per run
    warmup: int = 1
    digits_batch: int = 64       # the digits runs' batch
    mid_batch: int = 2           # the mid-size SD3 / FLUX batch (32 px, 64 image tokens)
    mid_resolution: int = 32     # the mid-size SD3 / FLUX image size in pixels (tiny VAE: latents of half of it)
    device: str = "cpu"          # cpu, or cuda: iteration and sampling on the mid-size models in bf16 (setups)
    repeats: int = 3             # sampling: median of this many
    allocator: str = "keep-freed"  # keep-freed: senseflow.allocator, as training sets it; default: glibc's own
    quick: bool = False          # the digits world's quick build and tiny SD3 / FLUX (tests): figures say nothing
    extra: dict = field(default_factory=dict)

    def batch(self, world: str) -> int:
        return self.digits_batch if world == "digits" else self.mid_batch


GPU_BENCHMARKS = ("iteration", "sampling")  # what --device cuda runs (issue: items 1-3 on a GPU, in bf16)
GPU_MID_BATCH, GPU_MID_RESOLUTION = 16, 64  # on a GPU: 16 x 256 image tokens per forward (the tiny VAE's largest)


def _check(s: Settings, names: list[str]) -> None:
    if s.device not in ("cpu", "cuda"):
        raise UserError(f"--device {s.device!r} is not a device; use cpu or cuda")
    if s.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                            "run on a GPU machine or leave --device out")
        off = [n for n in names if n not in GPU_BENCHMARKS]
        if off:
            raise UserError(f"benchmark {off[0]!r} runs on the CPU only; with --device cuda name "
                            f"{' or '.join(GPU_BENCHMARKS)}")
        if "digits" in s.worlds:
            raise UserError("--world digits runs on the CPU only (its networks are too small for a GPU); with "
                            "--device cuda use --world sd3 and/or --world flux")
    from senseflow.tiny_mode import MAX_RESOLUTION

    if not (4 <= s.mid_resolution <= MAX_RESOLUTION and s.mid_resolution % 4 == 0):
        raise UserError(f"--resolution {s.mid_resolution}: the mid-size models' tiny VAE draws images of a multiple "
                        f"of 4 pixels up to {MAX_RESOLUTION}; use e.g. --resolution 64")
    bad = [w for w in s.worlds if w not in setups.WORLDS]
    if bad:
        raise UserError(f"--world {bad[0]!r} is not a benchmark world; use one of {', '.join(setups.WORLDS)}")
    bad = [m for m in s.methods if m not in ("senseflow", "dmd2")]
    if bad:
        raise UserError(f"--method {bad[0]!r} is not a method; use senseflow or dmd2")


def _setup(s: Settings, w: str, method: str, log: Callable[[str], None]) -> setups.Setup:
    world = setups.digits_world(s.quick) if w == "digits" else None  # built once, then read from the cache
    extra = (["model.teacher=quick"] if s.quick else []) if w == "digits" else [f"model.resolution={s.mid_resolution}"]
    cfg = setups.run_config(w, method, extra, s.batch(w), s.threads, device=s.device)
    log(f"{w} {method}: building on {s.device}")
    return setups.build(w, cfg, world, tiny=s.quick, device=s.device)


class BenchmarkFailed(RuntimeError):
    """Some rows of a benchmark raised; the others were written (each failed row names its error)."""


def _row(fn, ident: dict, log) -> dict:
    """fn()'s row, or, if it raises, a row of `ident` and the error (its traceback goes to the log): one
    configuration that fails (a CUDA error, say) does not take the others' figures with it."""
    import traceback

    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the row and reported by `run`
        log(traceback.format_exc())
        return {**ident, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}


def _setup_rows(s: Settings, method: str, log, fn) -> list[dict]:
    rows = []
    for w in s.worlds:
        ident = {"world": w, "method": method}
        rows.append(_row(lambda: fn(_setup(s, w, method, log)), ident, log))
    return rows


def bench_iteration(s: Settings, log) -> list[dict]:
    from senseflow.bench.iteration import time_iterations

    def one(st):
        row = time_iterations(st, iterations=s.iterations, warmup=s.warmup)
        log(f"  {st.world} {row['method']}: efficiency {row['efficiency']}")
        return row

    return [r for method in s.methods for r in _setup_rows(s, method, log, one)]


def bench_sampling(s: Settings, log) -> list[dict]:
    from senseflow.bench.sampling import time_sampling

    def one(st):
        row = time_sampling(st, batch_size=s.batch(st.world), repeats=s.repeats)
        log(f"  {st.world}: speed-up {row['speedup']}x of {row['limit']}x")
        return row

    return _setup_rows(s, "senseflow", log, one)


def bench_step(s: Settings, log) -> list[dict]:
    """Distiller.step on the digits world, as `senseflow world digits bench` timed it (senseflow.bench.step)."""
    from senseflow.bench.step import time_dmd_iterations

    world = setups.digits_world(s.quick)
    rows = time_dmd_iterations(world, threads=(s.threads,), batch_size=8 if s.quick else s.digits_batch,
                               periods=1 if s.quick else 10, warmup=2 if s.quick else 5)
    for r in rows:
        log(f"  {r['run']}: G {r['generator_ms']} / critic {r['critic_ms']} / TTUR mean {r['ttur_mean_ms']} ms")
    return rows


def bench_scaling(s: Settings, log) -> list[dict]:
    """Batch sizes on every world, image sizes on SD3 / FLUX (the digits world's images are 8x8)."""
    from senseflow.bench.scaling import scale

    world = setups.digits_world(s.quick) if "digits" in s.worlds else None
    rows = []
    for w in s.worlds:
        common = dict(threads=s.threads, iterations=1 if s.quick else 2, digits_world=world, tiny=s.quick, log=log)
        if w == "digits":
            rows.append(scale(w, "batch", (8, 16) if s.quick else (16, 32, 64, 128), batch=64, **common))
        else:
            rows.append(scale(w, "batch", (1, 2) if s.quick else (1, 2, 4), batch=1, **common))
            rows.append(scale(w, "resolution", (16, 32) if s.quick else (32, 64), batch=1, **common))
    return rows


def bench_harness(s: Settings, log) -> list[dict]:
    """The local grid against separate `senseflow train` processes (digits; subprocesses, minutes)."""
    from senseflow.bench.harness import compare

    return [compare(cells=2, iterations=20 if s.quick else 300, log=log)]


def bench_metrics(s: Settings, log) -> list[dict]:
    from senseflow.bench.metrics import time_metrics

    return time_metrics(batch=8 if not s.quick else 2, repeats=1 if s.quick else s.repeats, log=log)


def bench_main_job(s: Settings, log) -> list[dict]:
    """The main job in a fresh clone, its wall time split (about 18 minutes; only when named)."""
    from senseflow.bench.main_job import measure

    return [measure(log=log)]


BENCHMARKS: dict[str, Callable[[Settings, Callable[[str], None]], list[dict]]] = {
    "iteration": bench_iteration, "sampling": bench_sampling, "metrics": bench_metrics, "step": bench_step,
    "scaling": bench_scaling, "harness": bench_harness, "main-job": bench_main_job,
}
ON_REQUEST = ("main-job",)  # run only when named: it is the whole main job


def file_name(name: str, device: str) -> str:
    """results/bench/<name>.json on the CPU, <name>-cuda.json on a GPU."""
    return f"{name}.json" if device == "cpu" else f"{name}-{device}.json"


def run(names: list[str], s: Settings, out_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Run each named benchmark (when `names` is empty: all but ON_REQUEST, on a GPU those of GPU_BENCHMARKS)
    and write out_dir/<name>.json (<name>-cuda.json on a GPU); returns the paths."""
    names = list(names) or list(GPU_BENCHMARKS if s.device == "cuda" else
                                [n for n in BENCHMARKS if n not in ON_REQUEST])
    for n in names:
        if n not in BENCHMARKS:
            raise UserError(f"benchmark {n!r} does not exist; use one of {', '.join(BENCHMARKS)} (or none: all but "
                            f"{', '.join(ON_REQUEST)})")
        if n in ON_REQUEST and s.quick:
            raise UserError(f"benchmark {n!r} has no --quick form (it runs the real main job); leave --quick out")
    _check(s, names)
    if s.allocator not in ("keep-freed", "default"):
        raise UserError(f"--allocator {s.allocator!r} is not a setting; use keep-freed (as training) or default")
    if s.allocator == "keep-freed":
        from senseflow.allocator import keep_freed_memory

        s.extra["allocator_applied"] = keep_freed_memory()
    paths = []
    failed = []
    old = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        for n in names:
            head = record.header(n, s.threads, asdict(s))
            with torch.random.fork_rng(devices=[]):
                rows = BENCHMARKS[n](s, log)
            paths.append(record.write(out_dir / file_name(n, s.device), {**head, "rows": rows}))
            log(f"wrote {paths[-1]}")
            failed += [f"{n} {r.get('world', '')} {r.get('method', '')}: {r['error']}".replace("  ", " ")
                       for r in rows if "error" in r]
    finally:
        torch.set_num_threads(old)
    if failed:
        raise BenchmarkFailed("; ".join(failed))
    return paths
