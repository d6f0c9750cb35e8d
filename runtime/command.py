"""The one wrapper of every maskclip command: `-h`, the exit-status epilog, and errors as one line + status.

    @command("maskclip-foo", extra="train")
    @click.option(...)
    def main(...): ...

Inside a command, raise what happened (errors.py); this wrapper prints `maskclip-foo: error: <one line>`
on stderr and exits with the class's status (the table in errors.py), never with a traceback. A missing
optional dependency (torch for a command run after the runtime-only install) becomes one line naming
the extra to install, status 4. Set MASKCLIP_TRACEBACK=1 to see the traceback of an internal error.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys

import click

from .errors import (
    EXIT_BACKEND_UNAVAILABLE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FINISHED,
    EXIT_STATUSES,
    EXIT_USAGE,
    MaskclipError,
    install_hint,
    message_of,
)
from .kernel.atomic import prepare_output_file, write_text_atomic

# Top-level modules of the optional dependencies -> the extra (setup.py) that installs them.
_TRAIN_MODULES = "torch torchvision open_clip timm safetensors albumentations pyarrow skimage scipy matplotlib"
EXTRA_OF_MODULE = {
    **dict.fromkeys(_TRAIN_MODULES.split(), "train"),
    **dict.fromkeys(("onnx", "onnxslim", "polygraphy"), "export"),
    "onnxruntime": "cpu",
    **dict.fromkeys(("fastapi", "uvicorn", "multipart", "prometheus_client"), "serve"),
    "pytriton": "triton",
}
# Extras that install others too (setup.py: export = train + ..., triton = serve + ...).
EXTRAS_WITHIN = {"export": {"train", "export"}, "triton": {"serve", "triton"}}


# A path that does not exist or cannot be opened is bad input, whichever command is given it.
BAD_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def exit_status_epilog(before: str | None = None) -> str:
    """The exit-status table as a --help epilog (\\b keeps click from re-wrapping its lines)."""
    rows = "\n".join(f"  {status:<4} {meaning}" for status, meaning in EXIT_STATUSES)
    table = f"\b\nExit status:\n{rows}"
    return f"{before}\n\n{table}" if before else table


class MaskclipCommand(click.Command):
    """A click command whose errors are reported by the table in errors.py.

    extra: the setup.py extra the command needs beyond the runtime (named when a module of it is missing).
    input_errors: further exception types this command's code raises for bad input (status 2).
    """

    def __init__(self, *args, extra: str | None = None, input_errors: tuple[type[BaseException], ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra
        self.input_errors = input_errors

    def invoke(self, ctx: click.Context):
        try:
            # -q of a command without its own quiet handling: its stderr is dropped while it runs; the error
            # line (printed below, after the with) still comes through.
            with contextlib.redirect_stderr(io.StringIO()) if ctx.meta.get(QUIET_KEY) else contextlib.nullcontext():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own: --help, usage errors (status 2)
        except KeyboardInterrupt:
            click.echo(f"{self.name}: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except MaskclipError as exc:
            if not exc.args:  # e.g. SomeInputsFailed(): each failure was reported as it happened
                ctx.exit(exc.exit_code)
            self._fail(ctx, message_of(exc), exc.exit_code)
        except ModuleNotFoundError as exc:
            root = (exc.name or "").partition(".")[0]
            if root not in EXTRA_OF_MODULE:
                self._internal_error(ctx, exc)
            extra = EXTRA_OF_MODULE[root]
            if extra in EXTRAS_WITHIN.get(self.extra, ()):  # name the extra that installs the whole command
                extra = self.extra
            self._fail(ctx, f"{root} is not installed; {self.name} needs, from the checkout: {install_hint(extra)}",
                       EXIT_BACKEND_UNAVAILABLE)  # fmt: skip
        except BrokenPipeError:
            # The reader of stdout went away (`maskclip-run photos --json - | head -1`): stop quietly, as a
            # SIGPIPE would, and keep the interpreter's final flush from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except BAD_PATH_ERRORS + self.input_errors as exc:
            self._fail(ctx, message_of(exc), EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - a bug or an environment failure: still one line
            self._internal_error(ctx, exc)

    def _internal_error(self, ctx: click.Context, exc: Exception) -> None:
        if os.environ.get("MASKCLIP_TRACEBACK"):
            raise exc
        self._fail(ctx, f"internal error: {type(exc).__name__}: {message_of(exc)}", EXIT_NOT_FINISHED)

    def _fail(self, ctx: click.Context, message: str, status: int) -> None:
        click.echo(f"{self.name}: error: {message}", err=True)
        ctx.exit(status)


QUIET_KEY = "maskclip.quiet"
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    expose_value=False,
    callback=lambda ctx, param, value: ctx.meta.__setitem__(QUIET_KEY, value),
    help="Nothing on stderr but errors (no progress, notes or summaries); results on stdout and in files stay.",
)


def command(
    name: str, *, extra: str | None = None, input_errors=(), epilog: str | None = None, quiet=False, **settings
):
    """click.command for a maskclip console script: `-h`/`--help`, the exit-status epilog, MaskclipCommand.

    quiet: add -q/--quiet (quiet_option), for commands that do not handle their own."""
    make = click.command(
        name,
        cls=MaskclipCommand,
        extra=extra,
        input_errors=tuple(input_errors),
        epilog=exit_status_epilog(epilog),
        context_settings={"help_option_names": ["-h", "--help"], **settings},
    )
    return (lambda function: make(quiet_option(function))) if quiet else make


def option_group(*options):
    """One decorator for click options shared by several commands, listed in --help in the order given."""

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def json_option(what: str):
    """--json PATH: where a command writes its JSON document; - is stdout (every command's meaning)."""
    return click.option(
        "--json",
        "json_path",
        metavar="PATH",
        type=click.Path(dir_okay=False, allow_dash=True),
        help=f"Write {what} as JSON to PATH (- for stdout).",
    )


def write_json(doc: dict, path: str) -> None:
    """The document of --json: to stdout for -, else atomically into PATH (its folder created).

    Values with to_dict() (the runtime's dataclasses) or item() (numpy scalars) are written as those."""
    text = json.dumps(doc, indent=2, default=_jsonable) + "\n"
    if path == "-":
        click.echo(text, nl=False)
        return
    prepare_output_file(path, "the JSON document")
    write_text_atomic(path, text)


def _jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
