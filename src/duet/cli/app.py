"""The `duet` command: one typer app, one module per command group, one error -> exit-code handler.

Each command module (train, evaluate, data, demo, serve, bench, monitor,
lifecycle) registers its commands on ``app`` and imports torch, onnx or
fastapi only inside a command, so ``duet --help`` stays fast. An option
whose declaration spans lines is a module constant just above its command
(``_SERVE_PORT = typer.Option(...)``), so a command reads as one line per
flag, then: parse, call the stage, print (the summary in a ``_print_*``
function of its own).

:func:`main` is the only place that turns an error into an exit code, by the
table in :mod:`duet.errors` (``EXIT_CODES``, also in README.md): a
``DuetError`` prints ``error: <message>`` and exits with its class's code; a
command-line usage error exits 2 (as a ``ConfigError``); anything else is a bug
and exits 70 with its traceback. User mistakes show a traceback only with
``--debug``. Progress bars and logs go to stderr, results to stdout (JSON with
``--json``).
"""

from __future__ import annotations

from duet.system.process import remember_interrupts, tune_process

tune_process()  # before anything imports torch: see duet/system/process.py
remember_interrupts()  # a Ctrl-C that an import swallows still stops training: see duet/system/process.py
import sys
import traceback
from typing import NoReturn

import typer
from rich.markup import escape  # messages may hold "[...]" (e.g. duet[train]): print them as text

import duet
from duet.cli import audit, bench, data, demo, evaluate, lifecycle, monitor, predict, serve, train
from duet.errors import BUG_EXIT_CODE, INTERRUPTED_EXIT_CODE, ConfigError, DuetError
from duet.system.progress import console

app = typer.Typer(
    name="duet",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state: dict[str, bool] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"duet {duet.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    """duet: a folder of labelled images -> a trained, evaluated, served model. Start with `duet demo`.

    \b
    DATA_DIR/
      cat/  001.jpg 002.png ...
      dog/  003.jpg ...
    (or DATA_DIR/train/<class>/..., DATA_DIR/val/<class>/... to fix the split yourself)
    """
    _state["debug"] = debug


for _group in (train, evaluate, predict, data, demo, serve, bench, monitor, lifecycle, audit):
    _group.register(app)


def _fail(error: DuetError) -> NoReturn:
    """Print the one-line message of a user error and exit with its code."""
    if _state["debug"]:
        traceback.print_exc()
    console.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(error.exit_code)


def main() -> None:
    """Run the CLI; every way out of it is a code of ``duet.errors.EXIT_CODES``."""
    try:
        # standalone_mode=False lets us format DuetError ourselves; click then
        # returns typer.Exit codes instead of exiting, so pass them on.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except DuetError as e:
        _fail(e)
    except (KeyboardInterrupt, typer.Abort):
        console.print("interrupted")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except ModuleNotFoundError as e:  # a lean install (duet[serve]) has no torch: say which extra to add
        from duet.system.extras import missing_extra

        error = missing_extra(e)
        if error is None:
            _bug()
        _fail(error)
    except Exception as e:
        # Usage errors (bad flag values...): typer vendors its own click, so
        # recognise them by shape rather than by class. They are bad options: exit 2.
        show = getattr(e, "show", None)
        if callable(show) and isinstance(getattr(e, "exit_code", None), int):
            show()
            sys.exit(ConfigError.exit_code)
        _bug()


def _bug() -> NoReturn:
    """Not a user error: show the traceback, say so, exit 70."""
    traceback.print_exc()
    console.print(
        f"[bold red]internal error[/] (a bug in duet {duet.__version__}, not in your input): "
        "please report it with the traceback above",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(BUG_EXIT_CODE)


if __name__ == "__main__":
    main()
