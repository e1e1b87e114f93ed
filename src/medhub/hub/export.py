"""A finetuned checkpoint becomes a hub model folder: one packaging for every modality (``medhub export-model``).

A model folder holds ``card.yaml``, ``weights/checkpoint.safetensors`` and ``weights/checkpoint.json`` (the
network, the task, the preprocessing settings; both files sha256-checked by the runner before a run) and a
``README.md``. The brain (:mod:`medhub.brain.hub`) and face (:mod:`medhub.face.hub`) exporters write the card's
words; :func:`package_model` writes the files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from medhub.errors import InputError
from medhub.hub.card import ModelCard, sha256_file

FINETUNED_KIND = "medhub-finetuning"
#: A finetuning run's weights file (an ensemble's first network); the sidecar ``checkpoint.json`` sits beside it.
MAIN_WEIGHTS = "checkpoint.safetensors"


def member_weights(sidecar: dict[str, Any]) -> list[str]:
    """The weights files of a run's networks: :data:`MAIN_WEIGHTS`, then those of any further ensemble members
    (``members`` of the sidecar, :func:`medhub.face.finetuning.combine_face_runs`)."""
    return [member["weights"] for member in sidecar.get("members") or [{"weights": MAIN_WEIGHTS}]]


def head_weights(sidecar: dict[str, Any]) -> list[str]:
    """The weights file of a run's descriptor head (:mod:`medhub.face.descriptors`), if it has one."""
    head = sidecar.get("descriptor_head")
    return [head["weights"]] if head else []


def read_finetuned_sidecar(finetuned: str | Path) -> dict[str, Any]:
    """The sidecar of a ``medhub finetune`` output folder; an error naming the folder when it is not one."""
    finetuned = Path(finetuned)
    sidecar = finetuned / "checkpoint.json"
    if not sidecar.is_file() or not (finetuned / MAIN_WEIGHTS).is_file():
        raise InputError(finetuned, "not a `medhub finetune` output (no checkpoint.safetensors / .json)",
                         code="no-input")
    return json.loads(sidecar.read_text())


def exported_modality(path: str | Path) -> str | None:
    """``"mri"`` or ``"photo"`` for a folder made by ``medhub export-model`` (a card and a finetuned checkpoint),
    ``None`` for anything else."""
    path = Path(path)
    sidecar = path / "weights" / "checkpoint.json"
    if not ((path / "card.yaml").is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("modality", "mri")) if meta.get("kind") == FINETUNED_KIND else None


def package_model(finetuned: str | Path, output: str | Path, card: dict[str, Any], *, trained_on: str,
                  license: str = "Apache-2.0", sidecar_overrides: dict[str, Any] | None = None) -> ModelCard:
    """Write ``OUTPUT/weights/`` (the checkpoint, its sidecar without the per-step loss history, with
    ``sidecar_overrides`` set) and
    ``OUTPUT/card.yaml`` (``card`` plus the weights entries, validated), and a ``README.md`` when there is none;
    other files in ``output`` stay. The weights folder is swapped whole, then the card replaced, so a reader never
    sees half a model. Returns the card."""
    finetuned, output = Path(finetuned), Path(output)
    sidecar = {**read_finetuned_sidecar(finetuned), **(sidecar_overrides or {})}
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output))
    try:
        (staging / "weights").mkdir()
        networks, heads = member_weights(sidecar), head_weights(sidecar)
        for file in networks + heads:
            shutil.copy2(finetuned / file, staging / "weights" / file)
        # the per-step loss history stays with the training run; the model keeps its settings and final loss
        history = sidecar.pop("loss_history", None) or [None]
        sidecar["final_loss"] = history[-1]
        (staging / "weights" / "checkpoint.json").write_text(json.dumps(sidecar, indent=1) + "\n")
        weights = []
        for file, purpose in ((networks[0], "network weights"),
                              *((m, "network weights of an ensemble member") for m in networks[1:]),
                              *((h, "age head on face-recognition descriptors") for h in heads),
                              ("checkpoint.json", "network, task and preprocessing settings")):
            weights.append({"file": f"weights/{file}", "sha256": sha256_file(staging / "weights" / file),
                            "size_bytes": (staging / "weights" / file).stat().st_size, "license": license,
                            "trained_on": trained_on, "purpose": purpose})
        model_card = ModelCard.model_validate({**card, "weights": weights[0], "extra_weights": weights[1:],
                                               "needs_weights": True})
        (staging / "card.yaml").write_text(yaml.safe_dump(model_card.model_dump(mode="json", exclude_none=True),
                                                          sort_keys=False, width=110, allow_unicode=True))
        if not (output / "README.md").exists():
            (output / "README.md").write_text(f"# {model_card.id}\n\n{model_card.title}.\n\nExported by `medhub "
                                              f"export-model` from `{finetuned}`.\n\nTraining data: {trained_on}\n")
        old = staging / "old-weights"
        if (output / "weights").exists():
            (output / "weights").rename(old)
        (staging / "weights").rename(output / "weights")
        (staging / "card.yaml").replace(output / "card.yaml")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_card
