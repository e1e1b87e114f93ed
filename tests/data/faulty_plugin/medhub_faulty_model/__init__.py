"""Test-only medhub model: a threshold segmentation that crashes or hangs on request.

The series description chooses the behaviour: ``CRASH`` ends the process at once (``os._exit``, as a segfault
or the OOM killer would: no exception, no clean-up), ``SLEEP`` hangs for 10 minutes. When ``MEDHUB_FAULTY_LOG``
names a file, every prediction appends ``start <series-uid> <pid>`` and ``end <series-uid> <pid>`` lines to it, so
tests can count how often each case really ran.
"""

import os
import time
from pathlib import Path

import numpy as np

from medhub.hub.model import FolderModel, Prediction, Table
from medhub.io.volume import Volume

DENSE_HU = 130


def _log(event: str, uid: str) -> None:
    path = os.environ.get("MEDHUB_FAULTY_LOG")
    if path:
        # O_APPEND: lines from concurrent workers never interleave within a line.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {uid} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _category(score: float) -> str:
    if score <= 0:
        return "0"
    if score < 100:
        return "1-99"
    if score < 400:
        return "100-399"
    return ">=400"


class FaultyThreshold(FolderModel):
    folder = Path(__file__).parent

    def predict(self, volume: Volume) -> Prediction:
        header = volume.source.headers[0] if volume.source is not None else {}
        description = str(header.get("SeriesDescription", ""))
        uid = str(header.get("SeriesInstanceUID", ""))
        _log("start", uid)
        if "CRASH" in description:
            os._exit(70)
        if "SLEEP" in description:
            time.sleep(600)
        labels = (volume.array >= DENSE_HU).astype(np.uint8)
        score = float(labels.sum()) * float(np.prod(volume.spacing))
        _log("end", uid)
        per_slice = labels.sum(axis=(1, 2))
        dense = Table(("slice", "voxels"), [{"slice": int(k), "voxels": int(n)} for k, n in enumerate(per_slice) if n])
        return Prediction(labels=labels, values={"agatston": round(score, 3), "risk_category": _category(score)},
                          tables={"dense_slices": dense})
