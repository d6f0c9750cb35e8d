"""The one error base class of every maskclip command, and the one table of exit statuses it maps to.

Each class carries its exit status, so a command never chooses a number: it raises what happened and
the command wrapper (command.py) prints one line and exits with the status of the class. Error classes
elsewhere (ArtifactError, CheckpointError, ...) subclass one of these, and keep their builtin base
(ValueError, RuntimeError) so code that catches those still does.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFICATION_FAILED = 3
EXIT_BACKEND_UNAVAILABLE = 4
EXIT_NOT_FINISHED = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it

# (status, meaning): the --help epilog of every command and the README table are this table.
EXIT_STATUSES = (
    (EXIT_OK, "success"),
    (EXIT_SOME_INPUTS_FAILED, "some inputs failed (each named on stderr; the others were processed)"),
    (EXIT_USAGE, "usage error or bad input (flags, models, configs, paths, files), found before any work"),
    (EXIT_VERIFICATION_FAILED, "verification failed (the export gate, an artifact's self-check)"),
    (EXIT_BACKEND_UNAVAILABLE, "backend unavailable (a missing extra such as torch, no GPU, no TensorRT)"),
    (EXIT_NOT_FINISHED, "could not finish: results unwritable (e.g. a full disk) or an internal error"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); 128+N: stopped by signal N"),
)


class MaskclipError(Exception):
    """Something a command reports in one line on stderr and turns into its exit status."""

    exit_code = EXIT_NOT_FINISHED


class UsageError(MaskclipError):
    """The command was called wrongly: contradicting or missing options."""

    exit_code = EXIT_USAGE


class InputError(MaskclipError):
    """An input cannot be used: a missing file, an unknown model or config, a corrupt artifact or checkpoint."""

    exit_code = EXIT_USAGE


class SomeInputsFailed(MaskclipError):
    """Some of the inputs failed (each already reported); the others were processed."""

    exit_code = EXIT_SOME_INPUTS_FAILED


class VerificationFailed(MaskclipError):
    """A result does not match its reference beyond the tolerances (export gate, self-check)."""

    exit_code = EXIT_VERIFICATION_FAILED


class BackendUnavailable(MaskclipError, RuntimeError):
    """The requested backend cannot run here; the message says what to install or use instead."""

    exit_code = EXIT_BACKEND_UNAVAILABLE


class NotFinished(MaskclipError):
    """The work could not be completed for a reason outside the inputs (e.g. the results cannot be written)."""

    exit_code = EXIT_NOT_FINISHED


def install_hint(extra: str) -> str:
    """The command that installs a setup.py extra: from the checkout (the package is on no index), with the
    pinned versions; every missing-dependency message says it this way."""
    return f'pip install -c constraints.txt -e ".[{extra}]"'


def message_of(exc: BaseException) -> str:
    """The one line an error is reported as (KeyError's str() would add quotes; only the first line counts)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
