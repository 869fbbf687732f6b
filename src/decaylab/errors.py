"""The exception types that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user (file, config field, option): shown as one line, never a traceback."""


class RankError(UserError):
    """Trouble of one data-parallel rank alone (its data, its GPU): that rank reports it, naming itself; every other
    error of a torchrun job is rank 0's to report, once."""


class DamagedFile(UserError):
    """A file a command reads from a run or sweep folder is damaged (truncated, empty, overwritten).

    The message names the file and what is wrong; `still` says what still works (added by the layer that knows).
    """

    def __init__(self, path: Path | str, reason: str, still: str = "") -> None:
        self.path, self.reason, self.still = Path(path), reason, still
        super().__init__(f"{path} is damaged ({reason})" + (f"; {still}" if still else ""))

    def __reduce__(self):  # picklable across worker processes despite the extra arguments
        return (type(self), (self.path, self.reason, self.still))

    def saying(self, still: str) -> DamagedFile:
        """The same damage, with what still works."""
        return DamagedFile(self.path, self.reason, still)


class WriteError(UserError):
    """An OSError (disk full, permissions, …) while writing a file; what was there before is left as it was.

    `detail` says what was being written and why it failed (plus what is intact, where known); `hint` what to do;
    `full` whether the disk (or the quota) was full.
    """

    def __init__(self, detail: str, hint: str = "", full: bool = False) -> None:
        self.detail, self.hint, self.full = detail, hint, full
        super().__init__(f"{detail}; {hint}" if hint else detail)

    def __reduce__(self):
        return (type(self), (self.detail, self.hint, self.full))

    @property
    def when(self) -> str:
        """When to go on: `once there is space` for a full disk."""
        return "once there is space" if self.full else "once it can be written"
