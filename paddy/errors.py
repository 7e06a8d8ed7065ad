"""The one base of the errors paddy explains to its user, and the one handler every entry point uses.

A :class:`PaddyError` is bad input or a setting that cannot be honoured (a missing file, a negative
learning rate, a checkpoint that would run code). It carries its own message, which names the key or
file, the value and what would be valid, and its exit code. Entry points wrap their work in
:func:`reported`: such an error ends the command with that message on one line (a data error may
list its culprits below it) and the exit code, never a traceback. Anything else is a bug in paddy
and keeps its traceback. Commands that print rather than log (``python -m paddy.report``,
``python -m paddy.benchmark``) run their work through :func:`exit_status`, the same handler with a
``prog: message`` line on stderr and the exit code returned.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator

USER_ERROR_EXIT = 2


class PaddyError(ValueError):
    """Bad input or a setting paddy cannot honour; the command ends with :attr:`exit_code`."""

    exit_code = USER_ERROR_EXIT


class SettingError(PaddyError):
    """A config value outside what it may be (``data.batch_size=0``, ``optimizer.lr=-1``, ...)."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (terminal colour codes removed), for one-line errors."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _config_error(err: Exception) -> PaddyError | None:
    """An OmegaConf error about the user's config (a missing ``???`` value, ...) as a one-line error."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if not isinstance(err, OmegaConfBaseException):
        return None
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, MissingMandatoryValue):
        return SettingError(f"{key} is required: set {key}=<value> on the command line")
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return SettingError(f"config key {key}: {message}")


@contextlib.contextmanager
def reported(log: logging.Logger, reraise: bool = False) -> Iterator[None]:
    """Turn a :class:`PaddyError` (or an OmegaConf error in the user's config) into its message and
    ``sys.exit(exit_code)``. ``reraise``: raise it instead (a sweep's job, so the sweeper records a
    failed trial and goes on)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - sorted below: user errors exit, the rest re-raise
        user = err if isinstance(err, PaddyError) else _config_error(err)
        if user is None:
            raise
        # exit_code 0: a planned stop (a preempted run that requeued itself), not a failure.
        log.log(logging.WARNING if user.exit_code == 0 else logging.ERROR, "%s", user)
        if not reraise:
            sys.exit(user.exit_code)
        if user is err:
            raise
        raise user from err


class _OneLine(logging.Formatter):
    """``prog: message`` with the message's lines joined into one."""

    def format(self, record: logging.LogRecord) -> str:
        return re.sub(r"\s*\n\s*", " ", super().format(record)).strip()


def exit_status(prog: str, work: Callable[[], int | None]) -> int:
    """Run ``work`` for a command that prints instead of logging (``python -m paddy.report``,
    ``python -m paddy.benchmark``) under :func:`reported`: a user error ends it with ``prog: message`` on
    one line of stderr and its exit code as the return value; otherwise ``work``'s own status (None: 0)."""
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this call (a test may have replaced it)
    handler.setFormatter(_OneLine(f"{prog}: %(message)s"))
    logger = logging.getLogger("paddy.cli")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        with reported(logger, reraise=True):
            return int(work() or 0)
    except PaddyError as err:
        return err.exit_code
    finally:
        logger.removeHandler(handler)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
    except Exception:  # noqa: BLE001 - no Hydra context: a plain Python call
        return False


__all__ = ["USER_ERROR_EXIT", "PaddyError", "SettingError", "exit_status", "first_line", "in_multirun", "reported"]
