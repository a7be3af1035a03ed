"""One error hierarchy for every transport.

The engine raises these; the gRPC server maps each class to one status code
(``GRPC_STATUS``) and the remote client maps the code back, so user code catches
the same exception whether Lamina runs embedded or behind a server.
"""

from __future__ import annotations


class LaminaError(Exception):
    """Base class of every error Lamina raises on purpose."""

    #: name of the gRPC status code this error travels as (see ``grpc.StatusCode``)
    code: str = "INTERNAL"


class InvalidArgument(LaminaError, ValueError):
    """The request is malformed: wrong dimension, NaN, bad filter, bad id, ..."""

    code = "INVALID_ARGUMENT"


class NotFound(LaminaError, KeyError):
    """The named collection (or other object) does not exist."""

    code = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(LaminaError):
    """A collection with that name already exists."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(LaminaError):
    """The system is not in a state to run the request (e.g. the database is closed)."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(LaminaError):
    """The caller's credentials do not allow this request."""

    code = "PERMISSION_DENIED"


class Unauthenticated(LaminaError):
    """The request carries no valid credentials."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(LaminaError):
    """A limit was hit: message size, batch size, load."""

    code = "RESOURCE_EXHAUSTED"


class DiskFull(ResourceExhausted):
    """The data directory's file system is full: the write was refused whole (nothing of it
    is applied); reads go on, and writes resume by themselves once space is freed."""


class ReadOnly(FailedPrecondition):
    """The data directory cannot be written (a read-only file system, missing permission,
    or ``lamina serve --read-only``): writes are refused, reads are served."""


class DataLoss(LaminaError):
    """Stored data could not be read back intact (an I/O error or a checksum mismatch in a
    segment file): the request is refused rather than answered from damaged data. The
    message names the file and the repair (``lamina check``)."""

    code = "DATA_LOSS"


class Unavailable(LaminaError):
    """The server cannot be reached or is shutting down; retrying may help."""

    code = "UNAVAILABLE"


class DeadlineExceeded(LaminaError):
    """The request did not finish before its deadline."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(LaminaError):
    """The request was cancelled (its client left, or the server is shutting down) and its work stopped."""

    code = "CANCELLED"


class Internal(LaminaError):
    """An unexpected failure inside Lamina (a bug: please report it)."""

    code = "INTERNAL"


ERROR_BY_CODE: dict[str, type[LaminaError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DataLoss,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}
