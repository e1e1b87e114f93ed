"""The FOMO25 data layouts: sessions of NIfTI sequences, and their labels.

* **Pretraining** (FOMO60K): ``ROOT/sub_<id>/ses_<n>/<sequence>.nii.gz``; a repeated sequence is numbered
  (``t1.nii.gz``, ``t1_2.nii.gz``). The re-release puts the subjects in one folder per source dataset
  (``ROOT/<dataset>/sub_*/ses_*/``) with ``participants.tsv`` and ``mapping.tsv`` beside them: their rows are kept
  as each session's ``meta`` (matched on a ``participant_id``, ``subject`` or ``sub`` column).
* **Finetuning**: ``ROOT/preprocessed/sub_<id>/ses_1/<sequence>.nii.gz`` with ``ROOT/labels/sub_<id>/ses_1/`` holding
  ``label.txt`` (a class or a number) or ``seg.nii.gz`` (a mask).

Sequences are named as FOMO60K names them: ``flair``, ``dwi_b1000``, ``adc``, ``t2s`` or ``swi``, ``t1``, ``t2``.
Folders are walked through symbolic links (:func:`medhub.io.tree.walk_files`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from medhub.errors import InputError
from medhub.io.tree import walk_files

KNOWN_SEQUENCES = ("flair", "dwi_b1000", "adc", "t2s", "swi", "t1", "t2")
_SEQUENCE_FILE = re.compile(r"^(?P<name>[A-Za-z0-9]+(?:_b\d+)?)(?:_(?P<repeat>\d+))?\.nii(?:\.gz)?$")
_SUBJECT_COLUMNS = ("participant_id", "subject", "sub", "subject_id")


@dataclass(frozen=True)
class Session:
    """One imaging session: its sequence files (``t1``, ``t1_2``, ``flair``…), labels and subject metadata."""

    subject: str
    session: str
    files: dict[str, Path]
    dataset: str = ""
    label: str | None = None
    seg: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A unique, file-name-safe id: ``[dataset__]sub_<id>__ses_<n>``."""
        parts = [self.dataset] if self.dataset else []
        return "__".join([*parts, f"sub_{self.subject}", f"ses_{self.session}"])

    def sequence(self, name: str) -> Path | None:
        """The first file of a sequence (``t1`` gives ``t1.nii.gz``, not ``t1_2``)."""
        return self.files.get(name)


def sequence_name(filename: str) -> tuple[str, int] | None:
    """``('t1', 2)`` for ``t1_2.nii.gz``, ``('dwi_b1000', 1)`` for ``dwi_b1000.nii.gz``; ``None`` for other files."""
    match = _SEQUENCE_FILE.match(filename)
    if match is None:
        return None
    return match["name"].lower(), int(match["repeat"] or 1)


def find_sessions(root: str | Path) -> list[Session]:
    """Every session under ``root`` in either layout, in a stable order; :class:`InputError` when there is none.

    With ``root/preprocessed`` and ``root/labels`` present, the finetuning layout is read and each session gets
    its ``label`` (``label.txt``'s text) and ``seg`` (``seg.nii.gz``) where they exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder", code="not-found")
    finetuning = (root / "preprocessed").is_dir()
    images_root = root / "preprocessed" if finetuning else root
    grouped: dict[tuple[str, str, str], dict[str, Path]] = {}
    for path in walk_files(images_root).files:
        parsed = sequence_name(path.name)
        parts = path.relative_to(images_root).parts
        if parsed is None or len(parts) < 3 or not (parts[-3].startswith("sub_") and parts[-2].startswith("ses_")):
            continue
        dataset = "/".join(parts[:-3])
        name, repeat = parsed
        key = (dataset, parts[-3][4:], parts[-2][4:])
        grouped.setdefault(key, {})[name if repeat == 1 else f"{name}_{repeat}"] = path
    if not grouped:
        raise InputError(root, "no sessions found (expected sub_*/ses_*/<sequence>.nii.gz)", code="no-input")
    meta = _participants(images_root)
    sessions = []
    for (dataset, subject, session), files in sorted(grouped.items()):
        label, seg = None, None
        if finetuning:
            folder = root / "labels" / f"sub_{subject}" / f"ses_{session}"
            if (folder / "label.txt").is_file():
                label = (folder / "label.txt").read_text(encoding="utf-8").strip()
            if (folder / "seg.nii.gz").is_file():
                seg = folder / "seg.nii.gz"
        sessions.append(Session(subject=subject, session=session, files=dict(sorted(files.items())),
                                dataset=dataset, label=label, seg=seg,
                                meta=meta.get((dataset, subject), meta.get(("", subject), {}))))
    return sessions


def _participants(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of every ``participants.tsv`` / ``mapping.tsv`` under ``root``, by (dataset folder, subject id)."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for path in walk_files(root).files:
        if path.name not in ("participants.tsv", "mapping.tsv"):
            continue
        dataset = "/".join(path.relative_to(root).parts[:-1])
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        for row in rows:
            column = next((c for c in _SUBJECT_COLUMNS if c in row), None)
            if column is None:
                continue
            subject = str(row[column]).removeprefix("sub_").removeprefix("sub-")
            out.setdefault((dataset, subject), {}).update({k: v for k, v in row.items() if k and v is not None})
    return out


#: BraTS file names (as the deepmedic examples ship them) -> FOMO sequence names.
BRATS_FILES = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"}


def brats_finetuning_layout(cases: list[Path], root: str | Path) -> Path:
    """Lay BraTS case folders out as a finetuning set through symbolic links (nothing is copied):
    ``ROOT/preprocessed/sub_<case>/ses_1/{flair,t1c}.nii.gz`` and ``ROOT/labels/sub_<case>/ses_1/seg.nii.gz``
    (the expert labels, 1-4; the whole tumour is label > 0, which is how the segmentation tasks read masks)."""
    root = Path(root)
    for case in cases:
        case = Path(case).resolve()
        images = root / "preprocessed" / f"sub_{case.name}" / "ses_1"
        labels = root / "labels" / f"sub_{case.name}" / "ses_1"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for name, file in BRATS_FILES.items():
            if not (images / f"{name}.nii.gz").exists():
                (images / f"{name}.nii.gz").symlink_to(case / file)
        if not (labels / "seg.nii.gz").exists():
            (labels / "seg.nii.gz").symlink_to(case / "OTMultiClass.nii.gz")
    return root
