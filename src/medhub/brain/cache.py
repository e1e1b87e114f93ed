"""A cache of preprocessed sessions: each session once through :mod:`medhub.brain.preprocess`, kept as ``.npz``.

``CACHE/<session key>.npz`` holds the preprocessed sequences (float32, 1 mm RAS), the session's mask on that grid
when it has one (``seg``), the :class:`~medhub.brain.preprocess.Preprocessing` record as JSON and the signature
(path, size, modification time) of every source file. A rerun skips a session whose sources are unchanged, so a
cache over 60,000 sessions can be filled over several runs; each file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhub.brain.layout import Session
from medhub.brain.preprocess import Preprocessing, preprocess
from medhub.io.files import atomic_path


@dataclass(frozen=True)
class CachedSession:
    """A session in the cache: where its ``.npz`` is and which sequences it holds."""

    key: str
    path: Path
    sequences: tuple[str, ...]
    label: str | None
    has_seg: bool

    def load(self) -> tuple[dict[str, np.ndarray], np.ndarray | None, Preprocessing]:
        """The preprocessed sequences, the mask on their grid (or ``None``) and the preprocessing record."""
        with np.load(self.path) as data:
            arrays = {name: data[f"seq_{name}"] for name in self.sequences}
            seg = data["seg"] if "seg" in data.files else None
            record = Preprocessing.from_dict(json.loads(str(data["preprocessing"])))
        return arrays, seg, record


def _signature(session: Session, names: tuple[str, ...]) -> list[list]:
    files = [session.files[n] for n in names] + ([session.seg] if session.seg else [])
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_sessions(sessions: list[Session], cache: str | Path, *, sequences: tuple[str, ...] | None = None,
                   progress: bool = True) -> list[CachedSession]:
    """Preprocess every session into ``cache`` (skipping those already there and unchanged) and list them.

    ``sequences`` picks the sequences to keep (a session lacking one is skipped, and so counted); by default every
    sequence the session has. A rich progress bar shows the work unless ``progress`` is false.
    """
    import nibabel as nib
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out: list[CachedSession] = []
    with Progress(TextColumn("[bold]preprocessing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("sessions", total=len(sessions))
        for session in sessions:
            names = tuple(sequences) if sequences else tuple(session.files)
            bar.advance(task)
            if any(n not in session.files for n in names):
                continue
            target = cache / f"{session.key}.npz"
            signature = _signature(session, names)
            entry = CachedSession(session.key, target, names, session.label, session.seg is not None)
            if target.is_file():
                with np.load(target) as data:
                    if json.loads(str(data["signature"])) == signature:
                        out.append(entry)
                        continue
            images = {n: nib.load(session.files[n]) for n in names}
            arrays, record = preprocess({n: (np.asarray(img.dataobj, np.float32), img.affine)
                                         for n, img in images.items()})
            extra = {}
            if session.seg is not None:
                mask = np.asarray(nib.load(session.seg).dataobj)
                extra["seg"] = record.from_input_grid(np.rint(mask).astype(np.uint8))
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **{f"seq_{n}": a for n, a in arrays.items()}, **extra,
                         preprocessing=json.dumps(record.to_dict()), signature=json.dumps(signature))
            out.append(entry)
    return out
