"""The `senseflow` command line.

Known errors (bad config, missing weights, bad input) print one line naming the key, the value and the
fix, and exit with status 2; nothing already done is lost.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from senseflow import config as config_mod

app = typer.Typer(help="SenseFlow distillation: train, evaluate, run grids and sweeps, query results.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Show and check run configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
err = Console(stderr=True)

# sub-apps living in their own modules: (module, attribute, name, help)
_SUBAPPS = [
    ("senseflow.commands.world", "app", "world", "Build the embedded worlds (digits)."),
    ("senseflow.commands.run", "app", None, None),
    ("senseflow.commands.plan", "app", None, None),
    ("senseflow.commands.results", "app", "results", "Sync, query and tabulate results."),
    ("senseflow.commands.grid", "app", "grid", "Plan, run and inspect experiment grids."),
    ("senseflow.commands.sweep", "app", "sweep", "Optuna sweeps over hyperparameters."),
]


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
    for module, attr, name, help_ in _SUBAPPS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        sub = getattr(mod, attr)
        if name is None:
            for cmd in sub.registered_commands:
                app.registered_commands.append(cmd)
        else:
            app.add_typer(sub, name=name, help=help_)


_register()


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [config_mod.ConfigError]
    for module, name in (("senseflow.models.loading", "ModelNotAvailableError"), ("evals.metrics", "MissingWeightsError"),
                         ("senseflow.errors", "UserError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = app(args=argv, standalone_mode=False)
    except SystemExit as e:  # typer/click exits
        return int(e.code or 0)
    except _known_errors() as e:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return rv if isinstance(rv, int) else 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
