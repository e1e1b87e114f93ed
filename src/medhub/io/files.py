"""Atomic file output: a reader never sees a half-written file.

Every output medhub writes goes through :func:`atomic_path`: the content is written to a temporary file in the
destination folder and renamed over the target only once complete (``os.replace`` is atomic on POSIX when both
paths are on one file system, which a sibling temp file guarantees).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medhub.errors import OutputError


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be created in it; :class:`OutputError` if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medhub-probe-"):
            pass
    except OSError as e:
        raise OutputError(folder, f"output folder is not writable ({e.strerror or e})") from e
    return folder


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to ``target``, on error delete it.

    Example::

        with atomic_path(out / "seg.dcm") as tmp:
            dataset.save_as(tmp)
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
    except OSError as e:
        raise OutputError(target, f"cannot write output ({e.strerror or e})") from e
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates owner-only files; outputs get the permissions any new file would get.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_staging_dir(parent: Path, name: str) -> Path:
    """A hidden, uniquely named folder in ``parent`` with normal permissions (mkdtemp's are owner-only)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def sidecar_path(weights_path: str | Path) -> Path:
    """The JSON sidecar beside a weights file: ``x.pt`` -> ``x.json``, ``x.txt.gz`` -> ``x.json``."""
    path = Path(weights_path)
    return (path.with_suffix("") if path.suffix == ".gz" else path).with_suffix(".json")
