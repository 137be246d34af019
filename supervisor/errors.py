"""The few exceptions the core raises, each mapped to one protocol error code."""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error that becomes a protocol error reply."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(CorralError):
    """The request is malformed or an argument is wrong."""

    code = "invalid_request"


class UnknownCommand(CorralError):
    """No handler is registered for the command name."""

    code = "unknown_command"


class UnknownHandle(CorralError):
    """No container has this handle (or it was destroyed)."""

    code = "unknown_handle"


class UnknownJob(CorralError):
    """The container has no job with this id (or it was already linked)."""

    code = "unknown_job"


class InvalidState(CorralError):
    """The container's state does not allow the request."""

    code = "invalid_state"


class LimitExceeded(CorralError):
    """A configured limit would be exceeded."""

    code = "limit_exceeded"


class NoCapacity(CorralError):
    """A pool (addresses, ports, ...) is exhausted."""

    code = "no_capacity"


class ProtocolViolation(InvalidRequest):
    """The line cannot be read at all; the connection is closed after the reply."""
