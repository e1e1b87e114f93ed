"""Errors that reach users.

Every error that medhub expects (bad input, an unwritable folder, a model that refuses) is a
:class:`MedhubError`. Its ``str()`` is one line that names the file or series and the reason, and its
``code`` is a short machine-readable reason code that batch records and run records store. The CLI prints
that line and exits non-zero; only ``--debug`` shows a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedhubError(Exception):
    """An expected failure, with a reason code and a one-line message.

    Parameters
    ----------
    where:
        The file, folder or series the failure is about (shown first in the message).
    reason:
        Human-readable reason, one line.
    code:
        Stable, machine-readable reason code, e.g. ``"truncated"`` or ``"wrong-modality"``.
    """

    default_code = "error"

    def __init__(self, where: str | Path | None, reason: str, code: str | None = None) -> None:
        self.where = str(where) if where is not None else None
        self.reason = " ".join(str(reason).split())  # keep it on one line
        self.code = code or self.default_code
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        # Exception pickles its args (the reason only); a worker process must hand back where and code too.
        return type(self), (self.where, self.reason, self.code)

    @property
    def message(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


class InputError(MedhubError):
    """The input cannot be read or is not what a model needs (corrupt, wrong modality, bad geometry...)."""

    default_code = "bad-input"


class MissingDecoderError(InputError):
    """Pixel data uses a transfer syntax for which no decoder is installed."""

    default_code = "missing-decoder"


class OutputError(MedhubError):
    """An output cannot be written."""

    default_code = "output-not-writable"


class ModelError(MedhubError):
    """A model cannot run (unknown id, missing or corrupt weights, refused input)."""

    default_code = "model-error"


class VerificationError(MedhubError):
    """Reference data is missing or malformed."""

    default_code = "verification-error"
