"""`senseflow bench [NAME ...]`: benchmarks against the physical limit (senseflow.bench), written to
results/bench/<name>.json. Registered by senseflow.cli at the top level."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer()


@app.command("bench")
def bench(names: list[str] = typer.Argument(None, help="iteration | sampling | metrics | step | scaling | harness | main-job (default: all but main-job)"),
          world: list[str] = typer.Option(None, "--world", help="digits | sd3 | flux (repeatable; default all)"),
          method: list[str] = typer.Option(None, "--method", help="senseflow | dmd2 (repeatable; default both)"),
          threads: int = typer.Option(1, "--threads", min=1, help="torch threads"),
          iterations: int = typer.Option(3, "--iterations", min=1,
                                         help="timed (generator, critic-only) iteration pairs per run"),
          repeats: int = typer.Option(3, "--repeats", min=1, help="sampling / metrics: median of this many"),
          quick: bool = typer.Option(False, "--quick", help="the digits world's quick build and 1 iteration "
                                                            "(checks the code runs; the figures mean nothing)"),
          allocator: str = typer.Option("keep-freed", "--allocator",
                                        help="keep-freed (senseflow.allocator, as training sets it) | default "
                                             "(glibc's own: freed memory returned to the kernel)"),
          device: str = typer.Option("cpu", "--device",
                                     help="cpu | cuda (iteration and sampling on the mid-size SD3 / FLUX in bf16; "
                                          "written to <name>-cuda.json)"),
          batch: int = typer.Option(None, "--batch", min=1,
                                    help="mid-size SD3 / FLUX batch (default 2 on the CPU, 16 on a GPU)"),
          resolution: int = typer.Option(None, "--resolution", min=8,
                                         help="mid-size SD3 / FLUX image size in pixels, at most 64 (default 32 on "
                                              "the CPU, 64 on a GPU)"),
          out: Path = typer.Option(Path("results/bench"), "--out", help="folder for <name>.json"),
          table: bool = typer.Option(False, "--table", help="print the figures in --out as Markdown tables; run "
                                                            "nothing")):
    """Time the project against what it cannot avoid: iteration efficiency and the paper's additions
    (iteration), the 4-step student against the 50-step guided teacher (sampling), metric throughput (metrics),
    Distiller.step on the digits world (step: digits-senseflow, digits-dmd2, and digits-senseflow without D),
    time and memory against batch and image size (scaling), a local grid against separate processes (harness),
    and, only when named, the main job in a fresh clone with its wall time split (main-job, about 18 minutes)."""
    from senseflow.bench.suite import GPU_MID_BATCH, GPU_MID_RESOLUTION, Settings, run

    if table:
        from senseflow.bench.report import markdown

        typer.echo(markdown(out))
        return

    gpu = device == "cuda"
    s = Settings(threads=threads, iterations=1 if quick else iterations, repeats=1 if quick else repeats,
                 quick=quick, allocator=allocator, device=device,
                 mid_batch=batch or (GPU_MID_BATCH if gpu else Settings.mid_batch),
                 mid_resolution=resolution or (GPU_MID_RESOLUTION if gpu else Settings.mid_resolution))
    if world:
        s.worlds = tuple(world)
    elif gpu:
        s.worlds = ("sd3", "flux")
    if method:
        s.methods = tuple(method)
    from senseflow.bench.suite import BenchmarkFailed

    try:
        run(names or [], s, out, log=lambda m: typer.echo(m, err=True))
    except BenchmarkFailed as e:  # the other rows are written; each failure's traceback is in the log above
        typer.echo(f"senseflow bench: failed rows (written with their error): {e}", err=True)
        raise typer.Exit(1) from None
