"""``medhub export-fomo``: wrap a medhub model in the FOMO25 container contract.

The folder written holds ``predict.py`` (``python predict.py --flair F ... --output OUT``: one case, a number in
``OUT.txt`` or a mask in ``OUT.nii.gz``), ``Apptainer.def`` (``apptainer build submission.sif Apptainer.def``) and
``requirements.txt``; an exported model folder (``medhub export-model``) is copied in as ``model/``. The script runs
the model through medhub's runner, so the card's input checks, the preprocessing and the weights' sha256 check are
the same as with ``medhub run``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from medhub import __version__
from medhub.challenge.submissions import ModelSubmission, PredictionError, TruthCase
from medhub.challenge.tasks import FOMO25
from medhub.errors import InputError

PREDICT_TEMPLATE = '''#!/usr/bin/env python3
"""FOMO25 {task_name} (task {task_number}) submission: the medhub model {model_label}, written by
`medhub export-fomo` (medhub {version}). Usage: python predict.py {usage} --output OUT{suffix}"""

import argparse
import sys
from pathlib import Path

MODEL = {model_expr}
TASK = "{task_id}"
SEQUENCES = {sequences!r}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in SEQUENCES:
        parser.add_argument(f"--{{name}}", help=f"{{name}} image (NIfTI)")
    parser.add_argument("--output", required=True, help="the prediction file to write")
    args = parser.parse_args()
    from medhub.challenge.export import predict_fomo

    return predict_fomo(MODEL, TASK, {{name: getattr(args, name) for name in SEQUENCES}}, Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
'''

APPTAINER_TEMPLATE = '''Bootstrap: docker
From: python:3.11-slim

%files
    . /app

%post
    pip install --no-cache-dir -r /app/requirements.txt
    # a medhub wheel put in wheels/ (pip wheel --no-deps medhub) is installed when medhub is not on the index
    if ls /app/wheels/*.whl >/dev/null 2>&1; then pip install --no-cache-dir /app/wheels/*.whl; fi

%runscript
    exec python /app/predict.py "$@"

%labels
    medhub.model {model_label}
    medhub.version {version}
    fomo25.task {task_id}
'''

REQUIREMENTS = '''--extra-index-url https://download.pytorch.org/whl/cpu
torch==2.13.0
medhub=={version}
'''


def export_fomo(model: str, task_key: str, folder: str | Path) -> Path:
    """Write the FOMO25 submission folder for ``model`` on ``task_key`` (``1``, ``t1`` or ``infarct``)."""
    from medhub.hub.registry import get_card

    task = FOMO25.task(task_key)
    if not ModelSubmission(name=model, model=model).takes_part(task):
        raise InputError(None, f"{model} is a {get_card(model).task} model; task {task.id} ({task.name}) needs "
                         f"a {task.label} prediction", code="bad-option")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if Path(model).is_dir():
        shutil.rmtree(folder / "model", ignore_errors=True)
        shutil.copytree(model, folder / "model")
        model_expr, label = 'str(Path(__file__).resolve().parent / "model")', Path(model).name
    else:
        model_expr, label = repr(model), model
    sequences = [alt for entry in task.sequences for alt in entry.split("|")]
    usage = " ".join(f"--{name} {name.upper()}.nii.gz" for name in sequences)
    values = {"task_name": task.name, "task_number": task.id.lstrip("t"), "task_id": task.id, "model_label": label,
              "model_expr": model_expr, "sequences": sequences, "version": __version__, "usage": usage,
              "suffix": task.output_suffix}
    (folder / "predict.py").write_text(PREDICT_TEMPLATE.format(**values))
    (folder / "Apptainer.def").write_text(APPTAINER_TEMPLATE.format(**values))
    (folder / "requirements.txt").write_text(REQUIREMENTS.format(**values))
    return folder


def predict_fomo(model: str, task_key: str, inputs: dict[str, str | None], output: Path) -> int:
    """One case of the FOMO25 contract: run ``model`` on ``inputs`` and write ``output``; 0 on success, else a
    one-line error on stderr and 1."""
    task = FOMO25.task(task_key)
    case = TruthCase(case_id=output.name, inputs={name: Path(path) for name, path in inputs.items() if path})
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        ModelSubmission(name=model, model=model).predict(task, case, output)
    except PredictionError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    return 0
