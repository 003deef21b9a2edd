"""`senseflow plan PRESET [overrides] --gpus N --gpu-mem GiB [--nodes M]`: memory, FLOPs and time of a run at
full size (senseflow.planner), and the input files it needs (senseflow.preflight)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(no_args_is_help=True)


def _number(text: str, option: str, example: str) -> float:
    from senseflow.errors import UserError

    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{option} {text!r} is not a number; give e.g. {option} {example}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise UserError(f"{option} {text!r} must be a positive number, e.g. {option} {example}")
    return value


@app.command("plan")
def plan_cmd(source: str = typer.Argument(..., help="preset name or YAML file, e.g. sd35-large-senseflow"),
             overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.batch_size=2"),
             gpus: str = typer.Option("8", "--gpus", help="GPUs in all"),
             gpu_mem: str = typer.Option("80", "--gpu-mem", help="memory of one GPU in GiB"),
             nodes: str = typer.Option("1", "--nodes", help="nodes the GPUs are spread over"),
             mfu: str = typer.Option(str(0.35), "--mfu", help="model-FLOPs utilisation for the time estimate"),
             as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
             files: bool = typer.Option(True, "--files/--no-files", help="list the input files the run needs")):
    """Memory per GPU, FLOPs, time per iteration and a verdict for a run on the published architectures."""
    from senseflow import config as config_mod
    from senseflow import planner
    from senseflow.errors import UserError

    n_gpus, n_nodes = _number(gpus, "--gpus", "8"), _number(nodes, "--nodes", "1")
    if n_gpus != int(n_gpus) or n_nodes != int(n_nodes):
        raise UserError(f"--gpus {gpus} and --nodes {nodes} must be whole numbers")
    mem = _number(gpu_mem, "--gpu-mem", "80")
    util = _number(mfu, "--mfu", "0.35")
    if util > 1:
        raise UserError(f"--mfu {mfu} is a fraction of the peak; give e.g. --mfu 0.35")
    cfg = config_mod.resolve(source, overrides or [])
    from torch.utils.checkpoint import CheckpointError

    try:
        p = planner.plan(cfg, gpus=int(n_gpus), gpu_mem_gib=mem, nodes=int(n_nodes), mfu=util)
    except planner.PlanError as e:
        raise UserError(str(e)) from None
    except CheckpointError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{source}: one iteration of this run fails under gradient checkpointing ({first}); "
                        f"it cannot be planned, nor trained with train.gradient_checkpointing=true on a GPU, "
                        f"until that is fixed") from None
    lines = planner.render(p)
    report = None
    if files:
        from senseflow import preflight

        report = preflight.check(cfg)
    if as_json:
        d = p.to_dict()
        if report is not None:
            d["inputs"] = [r.to_dict() for r in report]
        typer.echo(json.dumps(d, indent=1, default=str))
        return
    for line in lines:
        typer.echo(line)
    if report is not None:
        from senseflow import preflight

        typer.echo("")
        for line in preflight.render(report):
            typer.echo(line)
