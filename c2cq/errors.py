"""The typed error hierarchy. Every error a user or a peer can cause is one of these."""

from __future__ import annotations


class C2CQError(Exception):
    """Base of every c2cq error."""

    code: str = "internal"


class ConfigError(C2CQError):
    """A configuration value, flag or environment variable is invalid."""

    code = "config"


class WireError(C2CQError):
    """A frame could not be decoded into a message of the socket's schema."""

    code = "malformed"


class RequestError(C2CQError):
    """A request was rejected; ``code`` says why (see c2cq.schemas.enums.ErrorCode)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class RequestTimeout(C2CQError):
    """No reply arrived in time."""

    code = "timeout"


class PeerDeadError(C2CQError):
    """The peer (scheduler, executor, catalog) stopped answering or went away."""

    code = "peer_dead"


class ModelError(C2CQError):
    """A model cannot be registered, described or run (bad checkpoint, unsupported architecture)."""

    code = "bad_model"


class CapacityError(C2CQError):
    """A bounded resource (queue, KV blocks, memory) is full."""

    code = "capacity"


class AuthError(C2CQError):
    """A CURVE peer was refused or could not be authenticated (unlisted key, wrong server key)."""

    code = "auth"
