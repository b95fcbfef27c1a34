"""Exceptions raised by radgenome_hf.

Every error the package raises on bad input derives from :class:`RadGenomeError`, names the file
(and row/column where it applies) and says what to do next.
"""

from __future__ import annotations

from os import PathLike


class RadGenomeError(Exception):
    """Base class of every error raised by radgenome_hf."""


class VolumeNameError(RadGenomeError, ValueError):
    """A string is not a CT-RATE / RadGenome volume name such as ``train_1_a_1``."""


class MalformedFileError(RadGenomeError, ValueError):
    """A file exists but its content is not what the format requires.

    Attributes:
        path: the file.
        row: 1-based data row (header excluded) where the problem is, if known.
        column: column name where the problem is, if known.
    """

    def __init__(
        self,
        path: str | PathLike | None,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.column = column
        where = [] if self.path is None else [self.path]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CorruptVolumeError(MalformedFileError):
    """A NIfTI file (or its gzip stream) is truncated, corrupt, or has an impossible header."""


class UnsafeArchiveError(RadGenomeError):
    """An archive member would escape the extraction target, or is a link/device."""

    def __init__(self, archive: str | PathLike, member: str, reason: str) -> None:
        self.archive = str(archive)
        self.member = member
        super().__init__(f"{self.archive}: refusing member {member!r}: {reason}")


class ReleaseNotFoundError(RadGenomeError, FileNotFoundError):
    """The release folder (or a file it must contain) does not exist."""


class MissingVolumeError(ReleaseNotFoundError):
    """A row refers to a volume file that is not in the release."""


class ShapeMismatchError(RadGenomeError, ValueError):
    """A mask's grid does not match its volume's grid."""


class HubAccessError(RadGenomeError):
    """The Hugging Face Hub could not be reached, or refused access (gated, private, no token)."""


class UnknownAnatomyError(RadGenomeError, KeyError):
    """An anatomy name or path is not in the ontology."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ManifestError(RadGenomeError):
    """A generation stage's manifest is unreadable or belongs to another run."""


class PublishTargetError(RadGenomeError, ValueError):
    """A repo id, branch, tag or file path given to publishing is not valid for the Hub."""


class PublishVerificationError(RadGenomeError):
    """The pushed revision did not load back as expected; it was not tagged. ``.report`` has the details."""

    def __init__(self, message: str, report: object) -> None:  # report: publish.hub.PublishReport
        super().__init__(message)
        self.report = report


class UnsafeFileError(RadGenomeError):
    """Reading a file would execute code from it (a pickle); it is read only on explicit request."""


class BuildError(RadGenomeError, OSError):
    """Writing a packed release failed (a full disk, a lost permission, a concurrent build); the previous release
    is unchanged. An ``OSError`` too, with the ``errno`` of the failure when there was one."""


class CacheWriteError(RadGenomeError, OSError):
    """Writing the prepared rows into the ``datasets`` cache failed (a full disk, a lost permission); the message
    names the cache folder. An ``OSError`` too, with the ``errno`` of the failure."""
