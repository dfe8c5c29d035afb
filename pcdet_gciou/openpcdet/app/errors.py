"""How the tools end: one line on stderr naming the cause and the fix, and an exit code.

Exit codes: 0 success; 2 a failure the user can fix before the run starts (usage, config, input files, checkpoint,
a missing OpenPCDet or CUDA); 1 a failure during the run; 130 interrupted (SIGINT/SIGTERM). ``--debug`` prints the
traceback before the line. An exception not listed here is a bug: it propagates with its traceback.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Callable, Sequence

from ...training import CheckpointError, TrainingInterrupted

__all__ = ["EXIT_INTERRUPTED", "RunFailure", "ToolError", "UsageError", "quiet_third_party_warnings", "run_tool"]

EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """A known failure; its message is one line naming the cause and the fix."""

    exit_code = 1


class UsageError(ToolError):
    """Fixable before the run starts: arguments, config, data files, checkpoints, OpenPCDet or CUDA missing."""

    exit_code = 2


class RunFailure(ToolError):
    """The run started and failed (e.g. a non-finite loss)."""

    exit_code = 1


def quiet_third_party_warnings() -> None:
    """Hide warnings that tell a tool user nothing: numba's deprecation/performance notes, spconv's use of
    ``torch.cuda.amp.custom_fwd``, OpenPCDet's ``torch.meshgrid`` without ``indexing`` and its ``pin_memory=True``
    on CPU. Tools only: the library itself leaves warnings alone."""
    warnings.filterwarnings("ignore", module=r"numba(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.cuda\.amp\.custom_(fwd|bwd)")
    warnings.filterwarnings("ignore", category=UserWarning, message=r"torch\.meshgrid: in an upcoming release")
    warnings.filterwarnings("ignore", category=UserWarning, message=r"'pin_memory' argument is set as true but no")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")).strip() or type(exc).__name__


def _known(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) of a known failure, or None."""
    if isinstance(exc, TrainingInterrupted):
        return EXIT_INTERRUPTED, (
            f"training interrupted ({exc.signal_name}) at iteration {exc.global_iter}, saved {exc.checkpoint}; "
            f"rerun the same command to resume from it"
        )
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, ToolError):
        return exc.exit_code, _one_line(exc)
    if isinstance(exc, CheckpointError):
        return UsageError.exit_code, _one_line(exc)
    if isinstance(exc, FloatingPointError):
        return RunFailure.exit_code, f"{_one_line(exc)}; lower OPTIMIZATION.LR or check the data (--debug: traceback)"
    return None


def run_tool(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Run a tool's ``main(argv)``; returns its exit code after printing a known failure as one stderr line."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "tool")
    quiet_third_party_warnings()
    try:
        main(args)
    except BaseException as exc:  # noqa: BLE001 -- sorted into known (one line) and unknown (re-raised) below
        known = _known(exc)
        if known is None:
            raise
        if "--debug" in args:
            traceback.print_exc()
        print(f"{prog}: error: {known[1]}" if known[0] != EXIT_INTERRUPTED else f"{prog}: {known[1]}", file=sys.stderr)
        return known[0]
    return 0
