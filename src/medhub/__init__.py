"""medhub: run packaged medical-imaging models with one command, DICOM in and DICOM out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medhub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
