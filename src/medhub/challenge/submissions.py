"""Submissions on one interface: a medhub model, a folder of prediction files, or a FOMO25 container command.

Each answers :meth:`Submission.predict` for one case of one task and writes the prediction where the evaluation
asks (``<case>.txt`` holding a number, or ``<case>.nii.gz`` holding a mask), or raises :class:`PredictionError`
with a reason code. :func:`validate_prediction` then checks the file exactly as the FOMO25 validator does: the
number must parse as a finite float; a mask must have the input image's shape and values exactly {0, 1}.

The FOMO25 container contract: the submission is run once per case as ``python /app/predict.py --flair F --adc A
... --output OUT`` (one ``--<sequence>`` per input the task names, the file a NIfTI image), inside the Apptainer
image when ``apptainer`` is installed (``apptainer exec IMAGE.sif python /app/predict.py ...``), otherwise by
running the submission folder's ``predict.py`` with the same arguments; the case fails when it runs over the time
limit (120 s by default) or exits non-zero.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhub.challenge.tasks import TaskSpec

#: Default per-case time limit of a command submission (s), as in FOMO25.
TIME_LIMIT_S = 120.0


class PredictionError(Exception):
    """A case without a valid prediction: ``code`` (``missing``, ``timeout``, ``crashed``, ``unparsable``,
    ``not-finite``, ``wrong-shape``, ``not-binary``, ``failed``) and a one-line ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TruthCase:
    """One case of a task: its id (``sub_7``), its input images by sequence name, and the truth."""

    case_id: str
    inputs: dict[str, Path]
    label: float | None = None
    mask: Path | None = None


def task_inputs(task: TaskSpec, files: dict[str, Path]) -> dict[str, Path]:
    """The task's sequences found among ``files`` (``swi|t2s``: the first alternative present), in task order."""
    found = {}
    for entry in task.sequences:
        name = next((alt for alt in entry.split("|") if alt in files), None)
        if name is not None:
            found[name] = files[name]
    return found


@dataclass
class Submission:
    """Base: ``name`` and the time a case took, kept per prediction."""

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    tasks: frozenset[str] | None = None  # the task ids it answers, when given (``NAME=...@t1,t3``)

    def predict(self, task: TaskSpec, case: TruthCase, output: Path) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def takes_part(self, task: TaskSpec) -> bool:
        """Whether the submission answers ``task`` at all (one that does not ranks last on it, ``n + 1``)."""
        return self.tasks is None or task.id in self.tasks


@dataclass
class FolderSubmission(Submission):
    """Prediction files already made: ``FOLDER/<task id or name>/<case>.txt|.nii.gz`` or ``FOLDER/<case>...``."""

    folder: Path = Path()

    def predict(self, task: TaskSpec, case: TruthCase, output: Path) -> Path:
        for sub in (task.id, task.name, ""):
            candidate = self.folder / sub / f"{case.case_id}{task.output_suffix}"
            if candidate.is_file():
                shutil.copyfile(candidate, output)
                return output
        raise PredictionError("missing", f"no {case.case_id}{task.output_suffix} in {self.folder}")

    def describe(self) -> str:
        return f"prediction folder {self.folder}"

    def takes_part(self, task: TaskSpec) -> bool:
        patterns = (f"{sub}*{task.output_suffix}" for sub in (f"{task.id}/", f"{task.name}/", ""))
        return super().takes_part(task) and any(any(self.folder.glob(p)) for p in patterns)


@dataclass
class CommandSubmission(Submission):
    """A FOMO25 container (``IMAGE.sif``) or a folder holding its ``predict.py``; see the module."""

    target: Path = Path()
    time_limit_s: float = TIME_LIMIT_S

    def command(self, arguments: list[str]) -> list[str]:
        if self.target.suffix == ".sif":
            apptainer = shutil.which("apptainer") or shutil.which("singularity")
            if apptainer is None:
                raise PredictionError("crashed", f"{self.target} is an Apptainer image and apptainer is not installed")
            return [apptainer, "exec", str(self.target), "python", "/app/predict.py", *arguments]
        script = self.target if self.target.is_file() else self.target / "predict.py"
        return [sys.executable, str(script), *arguments]

    def predict(self, task: TaskSpec, case: TruthCase, output: Path) -> Path:
        arguments = [a for name, path in task_inputs(task, case.inputs).items() for a in (f"--{name}", str(path))]
        start = time.perf_counter()
        try:
            proc = subprocess.run(self.command([*arguments, "--output", str(output)]), capture_output=True,
                                  text=True, timeout=self.time_limit_s)
        except subprocess.TimeoutExpired as e:
            raise PredictionError("timeout", f"ran over the {self.time_limit_s:g} s limit") from e
        finally:
            self.seconds[f"{task.id}/{case.case_id}"] = round(time.perf_counter() - start, 3)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PredictionError("crashed", f"exit status {proc.returncode}: {last[:200]}")
        if not output.is_file():
            raise PredictionError("missing", "the command wrote no output file")
        return output

    def describe(self) -> str:
        return f"FOMO25 command {self.target}"


@dataclass
class ModelSubmission(Submission):
    """A medhub model (an id, or a folder made by ``medhub export-model``) run by the runner on each case."""

    model: str = ""

    def predict(self, task: TaskSpec, case: TruthCase, output: Path) -> Path:
        from medhub.hub.cases import discover_inputs
        from medhub.hub.registry import get_model
        from medhub.hub.runner import run_case

        model = get_model(self.model)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="medhub-eval-") as tmp:
            session = Path(tmp) / "session"
            session.mkdir()
            for name, path in case.inputs.items():
                (session / f"{name}.nii.gz").symlink_to(Path(path).resolve())
            [found] = discover_inputs(session, model.card.inputs.sequences).cases
            wanted = ("nifti",) if task.label == "mask" else ("json",)
            (Path(tmp) / "out").mkdir()
            result = run_case(model, found, Path(tmp) / "out", outputs=wanted)
            self.seconds[f"{task.id}/{case.case_id}"] = round(time.perf_counter() - start, 3)
            if not result.ok:
                raise PredictionError("failed", f"{result.reason_code}: {result.message}")
            if task.label == "mask":
                if "nifti" not in result.outputs:
                    raise PredictionError("failed", f"{self.model} wrote no mask")
                shutil.copyfile(result.outputs["nifti"], output)
            else:
                first = model.card.outputs.values[0].name if model.card.outputs.values else None
                value = result.values.get(first) if first else None
                if not isinstance(value, (int, float)):
                    raise PredictionError("failed", f"{self.model} gave no number for {task.name}")
                output.write_text(f"{float(value)!r}\n")
        return output

    def describe(self) -> str:
        return f"medhub model {self.model}"

    def takes_part(self, task: TaskSpec) -> bool:
        """A model answers the tasks of its kind: classification a binary task, regression a value, segmentation
        a mask."""
        from medhub.hub.registry import get_card

        kind = {"binary": "classification", "value": "regression", "mask": "segmentation"}[task.label]
        return super().takes_part(task) and get_card(self.model).task == kind


def parse_submission(spec: str) -> Submission:
    """``NAME=model:ID``, ``NAME=folder:PATH`` or ``NAME=fomo:PATH``, optionally ending ``@t1,t3`` (the tasks it
    answers). ``NAME=`` and the kind are optional: a model id, a folder holding ``predict.py`` or an ``.sif`` file,
    and a folder of predictions are told apart."""
    from medhub.errors import InputError

    spec, _, only = spec.partition("@")
    tasks = frozenset(f"t{t.strip().lstrip('t')}" for t in only.split(",") if t.strip()) or None
    name, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    kind, _, target = rest.partition(":") if rest.split(":", 1)[0] in ("model", "folder", "fomo") else ("", "", rest)
    path = Path(target)
    if not kind:
        kind = ("fomo" if path.suffix == ".sif" or (path / "predict.py").is_file() or path.name == "predict.py"
                else "folder" if path.is_dir() and not (path / "card.yaml").is_file() else "model")
    name = name or (path.stem if kind != "model" else target)
    if kind == "model":
        return ModelSubmission(name=name, model=target, tasks=tasks)
    if not path.exists():
        raise InputError(path, f"submission {name!r}: no such file or folder", code="not-found")
    if kind == "folder":
        return FolderSubmission(name=name, folder=path, tasks=tasks)
    return CommandSubmission(name=name, target=path, tasks=tasks)


def read_value(path: Path) -> float:
    """The number in a ``.txt`` prediction: the whole text, or (a CSV as the FOMO25 templates write) the last cell
    of the last line. Raises :class:`PredictionError` when it does not parse or is not finite."""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    candidates = [text] + ([text.splitlines()[-1].split(",")[-1].strip()] if text else [])
    for candidate in candidates:
        try:
            value = float(candidate)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise PredictionError("not-finite", f"{path.name} holds {candidate!r}")
        return value
    raise PredictionError("unparsable", f"{path.name} does not hold a number ({text[:40]!r})")


def read_mask(path: Path, reference: Path) -> np.ndarray:
    """A predicted mask as booleans; it must have ``reference``'s shape and values exactly {0, 1}."""
    import nibabel as nib

    try:
        mask = np.asarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel raises many kinds on a damaged file
        raise PredictionError("unparsable", f"{path.name} is not a readable NIfTI image ({e})") from e
    shape = nib.load(reference).shape
    if mask.shape != shape:
        raise PredictionError("wrong-shape", f"mask shape {mask.shape} differs from the input's {shape}")
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(f"{v:g}" for v in values[:5]) + ("…" if values.size > 5 else "")
        raise PredictionError("not-binary", f"mask values {{{shown}}} are not exactly {{0, 1}}")
    return mask.astype(bool)
