"""The `senseflow` command line.

Known errors (bad config, missing weights, bad input) print one line naming the key, the value and the
fix, and exit with status 2; nothing already done is lost.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from senseflow import config as config_mod
from senseflow.commands import bench, grid, plan, results, run, sweep, world

# -h everywhere: click hands help_option_names down from the top context to every subcommand
app = typer.Typer(help="SenseFlow distillation: train, evaluate, run grids and sweeps, query results.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
config_app = typer.Typer(help="Show and check run configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
err = Console(stderr=True)

# sub-apps living in their own modules: (app, group name, help); no group name: the app's commands join the top level
_SUBAPPS: list[tuple[typer.Typer, str | None, str | None]] = [
    (world.app, "world", "Build the embedded worlds (digits)."),
    (run.app, None, None),
    (plan.app, None, None),
    (results.app, "results", "Sync, query and tabulate results."),
    (grid.app, "grid", "Plan, run and inspect experiment grids."),
    (sweep.app, "sweep", "Optuna sweeps over hyperparameters."),
    (bench.app, None, None),
]


def _version(value: bool) -> None:
    if value:
        from senseflow import __version__

        typer.echo(f"senseflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="print the version and exit")):
    """SenseFlow distillation: train, evaluate, run grids and sweeps, query results."""


@config_app.command("show")
def config_show(source: str = typer.Argument(..., help="preset name or YAML file"),
                overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. ida.lam=0.97")):
    """Print the fully resolved config (as saved next to every run)."""
    cfg = config_mod.resolve(source, overrides or [])
    typer.echo(cfg.to_yaml(), nl=False)


@config_app.command("presets")
def config_presets():
    """List the presets."""
    for name in sorted(config_mod.PRESETS):
        typer.echo(name)


def _register() -> None:
    for sub, name, help_ in _SUBAPPS:
        if name is None:
            for cmd in sub.registered_commands:
                app.registered_commands.append(cmd)
        else:
            app.add_typer(sub, name=name, help=help_)


_register()


def _known_errors() -> tuple[type[BaseException], ...]:
    from evals.weights import MissingWeightsError
    from senseflow.errors import UserError
    from senseflow.models.loading import ModelNotAvailableError

    return (config_mod.ConfigError, ModelNotAvailableError, MissingWeightsError, UserError)


def _click_errors() -> tuple[type[BaseException], ...]:
    """click's ClickException and the copy that typer bundles (typer raises its own, a different class)."""
    import click

    bundled = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return tuple({click.exceptions.ClickException, bundled})


def main(argv: list[str] | None = None) -> int:
    import click
    from rich.markup import escape

    try:
        rv = app(args=argv, standalone_mode=False, prog_name="senseflow")
    except SystemExit as e:  # typer/click exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _known_errors() as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except _click_errors() as e:  # usage errors: click's own message, status 2
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `senseflow` / `senseflow grid`: the help
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                typer.echo(ctx.get_help(), err=True)
                return 2
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        err.print(f"[bold red]error:[/] {escape(e.format_message())}{escape(hint)}", highlight=False, soft_wrap=True)
        return e.exit_code if isinstance(e.exit_code, int) else 2
    except (click.exceptions.Abort, typer.Abort):
        return 1
    except (click.exceptions.Exit, typer.Exit) as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
            raise
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(where)}{escape(e.strerror or str(e))}; free space or fix the "
                  "folder's permissions and run again (a run resumes from its last checkpoint)",
                  highlight=False, soft_wrap=True)
        return 2
    except RecursionError:
        err.print("[bold red]error:[/] the input is nested too deeply to read (a YAML file with thousands of "
                  "levels?); flatten it", highlight=False, soft_wrap=True)
        return 2
    return rv if isinstance(rv, int) else 0


# Commands that leave nothing open once they answer (`senseflow plan` writes its trace cache whole before it
# prints): their process ends without Python's teardown of torch, diffusers and transformers (about 1.5 s
# on a small CPU, a twentieth of a first plan).
_NOTHING_TO_CLOSE = {"plan"}


def _entry() -> None:
    code = main()
    if sys.argv[1:2] and sys.argv[1] in _NOTHING_TO_CLOSE:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # the reader went away (`| head`): nothing more to say to it
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _entry()
