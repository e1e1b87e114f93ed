"""Brain models on the hub: a finetuned checkpoint becomes a model folder in one command (``medhub export-model``).

A folder made by :func:`export_model` holds ``card.yaml``, ``weights/checkpoint.safetensors`` and
``weights/checkpoint.json`` (the network, the task and the finetuning settings; both files are sha256-checked by
the runner before a run) and a short ``README.md``. :class:`BrainTaskModel` runs such a folder: ``medhub run
FOLDER INPUT OUTPUT``, or by id for the built-in ``brain-tumor``, ``brain-infarct`` and ``brain-age``.

At inference a session goes through the same :func:`~medhub.brain.preprocess.preprocess` as at training (RAS,
foreground crop, z-normalization, 1 mm), then :func:`~medhub.brain.finetuning.predict`; a segmentation comes back
on the input grid of the session's first sequence through :meth:`Preprocessing.to_input_grid`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medhub.errors import InputError, ModelError
from medhub.hub.card import ModelCard
from medhub.hub.export import package_model, read_finetuned_sidecar
from medhub.hub.model import FolderModel, ModelInput, Prediction
from medhub.io.orientation import ras_view


def _word(pattern: str) -> str:
    """``pattern`` not inside a longer word; ``_`` and digits count as separators, as in ``DWI_ADC`` or ``T1C2``."""
    return rf"(?<![a-z])(?:{pattern})(?![a-z])"


#: Default SeriesDescription rules (regular expressions, case-insensitive) that pick each sequence among a DICOM
#: study's series. Post-contrast T1, FLAIR, ADC and T2* are excluded from the plainer names they contain.
_CONTRAST = _word(r"gd|gad|post|contrast|ce|t1c") + r"|\+c"
SERIES_RULES: dict[str, list[str]] = {
    "flair": [r"flair"],
    "t1c": [_word("t1c"), rf"t1.*({_CONTRAST})", rf"({_CONTRAST}).*t1"],
    "t1": [rf"^(?!.*({_CONTRAST})).*(t1|mprage|spgr|bravo)"],
    "t2": [rf"^(?!.*(flair|t2\*|t2s|{_word('swi|gre|star')})).*t2"],
    "dwi_b1000": [rf"^(?!.*({_word('adc|apparent|fa|exp')})).*(dwi|diff|trace|b1000|b_1000|b=1000)"],
    "adc": [_word("adc") + "|apparent diffusion"],
    "t2s": [r"t2\*|t2s|" + _word("swi|gre|susceptib\\w*|hemo\\w*")],
}

_BRAIN = {"value": "12738006", "scheme": "SCT", "meaning": "Brain"}
_ALTERED = {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"}
_VOLUME = {"value": "118565006", "scheme": "SCT", "meaning": "Volume"}


@dataclass(frozen=True)
class OutputTemplate:
    """A task's outputs on the hub: card ``outputs`` and how a prediction fills them."""

    title: str
    segments: tuple[dict, ...] = ()
    values: tuple[dict, ...] = ()


#: Hub outputs of each finetuning task (:data:`medhub.brain.finetuning.TASKS`). The first value of a segmentation
#: task is the volume of label 1, of a classification task the class-1 probability (the second its finding at 0.5),
#: of a regression task the prediction.
OUTPUTS: dict[str, OutputTemplate] = {
    "tumor": OutputTemplate(
        "Whole brain tumour segmentation on MRI (FLAIR + post-contrast T1)",
        segments=({"label": 1, "name": "Whole tumour", "category": _ALTERED, "anatomic_region": _BRAIN,
                   "type": {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"},
                   "color_rgb": [240, 90, 40]},),
        values=({"name": "whole_tumor_volume_ml", "unit": "ml", "concept": _VOLUME,
                 "description": "Volume of the whole-tumour segment: voxel count times voxel volume (input grid)."},)),
    "meningioma": OutputTemplate(
        "Extra-axial mass segmentation on MRI (FLAIR, DWI, T2*)",
        segments=({"label": 1, "name": "Extra-axial mass", "category": _ALTERED, "anatomic_region": _BRAIN,
                   "type": {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"},
                   "color_rgb": [240, 160, 40]},),
        values=({"name": "mass_volume_ml", "unit": "ml", "concept": _VOLUME,
                 "description": "Volume of the mass segment: voxel count times voxel volume (input grid)."},)),
    "infarct": OutputTemplate(
        "Brain infarct detection on MRI (DWI, ADC, FLAIR)",
        values=({"name": "infarct_probability", "unit": "{probability}",
                 "concept": {"value": "INFARCT-PROBABILITY", "scheme": "99MEDHUB",
                             "meaning": "Probability of cerebral infarction"},
                 "description": "The network's probability (0-1) that the session shows an infarct."},
                {"name": "infarct", "unit": "{text}",
                 "concept": {"value": "432504007", "scheme": "SCT", "meaning": "Cerebral infarction"},
                 "description": "'present' when infarct_probability >= 0.5, else 'absent'."})),
    "brain-age": OutputTemplate(
        "Brain age from MRI (T1, T2)",
        values=({"name": "brain_age_years", "unit": "a",
                 "concept": {"value": "BRAIN-AGE", "scheme": "99MEDHUB", "meaning": "Brain age estimated from MRI"},
                 "description": "The age (years) the network reads from the brain's appearance; not the "
                                "patient's recorded age."},)),
}


class BrainTaskModel(FolderModel):
    """A finetuned brain network in a model folder (see the module docstring).

    ``predict`` takes the session's volumes by the card's sequence names (all on the first one's grid, as the
    runner delivers them) and returns a uint8 label map on that grid (segmentation), or values.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        if folder is not None:
            self.folder = Path(folder)
        super().__init__()
        self._network: Any = None

    def network(self) -> Any:
        """The finetuned network and its :class:`~medhub.brain.finetuning.FinetuneConfig` (loaded once)."""
        if self._network is None:
            from medhub.brain.finetuning import load_finetuned

            self._network = load_finetuned(self.folder / "weights")
        return self._network

    def predict(self, volume: ModelInput) -> Prediction:
        import torch

        from medhub.brain.finetuning import predict
        from medhub.brain.preprocess import preprocess

        if not isinstance(volume, Mapping):
            raise ModelError(self.card.id, "needs a session of named sequences, got one volume", code="bad-input")
        net, config = self.network()
        task = net.task
        missing = [name for name in task.sequences if name not in volume]
        if missing:
            raise InputError(None, f"missing sequence {', '.join(missing)} ({self.card.id} needs "
                             f"{', '.join(task.sequences)})", code="missing-sequence")
        first = volume[task.sequences[0]]
        arrays, record = preprocess({name: ras_view(volume[name]) for name in task.sequences})
        torch.manual_seed(0)
        with torch.inference_mode():
            output = predict(net, arrays, config)
        values = [v.name for v in self.card.outputs.values]
        extra = {"preprocessed_shape": list(record.shape), "foreground_box_ras": [list(b) for b in record.box]}
        if task.kind == "segmentation":
            labels = record.to_input_grid(np.asarray(output)).astype(np.uint8)
            voxel_ml = abs(float(np.linalg.det(first.affine[:3, :3]))) / 1000.0
            volume_ml = float(np.count_nonzero(labels)) * voxel_ml
            warnings = [] if volume_ml > 0 else ["nothing segmented"]
            return Prediction(labels=labels, values={values[0]: round(volume_ml, 2)} if values else {},
                              warnings=warnings, extra=extra)
        if task.kind == "classification":
            probability = float(output)
            found = {values[0]: round(probability, 4)}
            if len(values) > 1:
                found[values[1]] = "present" if probability >= 0.5 else "absent"
            return Prediction(values=found, extra=extra)
        return Prediction(values={values[0]: round(float(output), 1)}, extra=extra)


def export_model(finetuned: str | Path, output: str | Path, *, model_id: str, version: str = "0.1.0",
                 name: str | None = None, trained_on: str | None = None, card: Mapping[str, Any] | None = None,
                 license: str = "Apache-2.0") -> ModelCard:
    """Turn a ``medhub finetune`` output folder into a hub model folder: ``OUTPUT/card.yaml`` and ``OUTPUT/weights/``
    are written (replacing older ones), a ``README.md`` when there is none; other files in ``output`` stay.

    ``trained_on`` states the training data (default: the sessions listed in the checkpoint); ``card`` overrides
    any card field (e.g. ``description``, ``limitations``, ``evaluation``, ``reference``). Returns the card."""
    finetuned, output = Path(finetuned), Path(output)
    sidecar = read_finetuned_sidecar(finetuned)
    task = sidecar["task"]
    template = OUTPUTS[task["name"]]
    results_path = finetuned / "finetuned.json"
    evaluation = json.loads(results_path.read_text()).get("evaluation", {}).get("summary") \
        if results_path.is_file() else None
    pretraining = sidecar.get("pretraining")
    origin = (f"finetuned from a {pretraining.get('arch')} {pretraining.get('objective')} pretraining checkpoint"
              if pretraining else "trained from random weights")
    trained_on = trained_on or (f"{len(sidecar['train_sessions'])} session(s): "
                                f"{', '.join(sidecar['train_sessions'])}")
    sequences = [{"name": s, "series_description": SERIES_RULES.get(s, [s])} for s in task["sequences"]]
    data: dict[str, Any] = {
        "id": model_id, "name": name or model_id, "version": version, "title": template.title,
        "description": f"A {sidecar['network'].get('base_channels')}-filter 3D U-Net ({task['kind']}, "
                       f"{origin}) on the sequences {', '.join(task['sequences'])}, preprocessed as in "
                       "training (RAS, foreground crop, z-normalization, 1 mm).",
        "task": task["kind"],
        "inputs": {"modality": "MR", "body_part": "BRAIN", "sequences": sequences,
                   "spacing_mm": {"in_plane_min": 0.3, "in_plane_max": 3.0, "slice_min": 0.3, "slice_max": 8.0},
                   "min_slices": 8},
        "outputs": {"segments": list(template.segments), "values": list(template.values)},
        "training_data": trained_on,
        "evaluation": f"Held out after finetuning: {json.dumps(evaluation)}" if evaluation else "",
        "intended_use": "Research: brain MRI analysis. Not for clinical diagnosis.",
        "limitations": "Trained on few sessions; see training_data.",
        "license": license, "authors": ["medhub contributors"],
        "resources": {"device": "cpu-or-gpu", "memory_gib": 4.0},
        **dict(card or {}),
    }
    return package_model(finetuned, output, data, trained_on=trained_on, license=license)


def train_and_export(folder: str | Path, data: str | Path, work: str | Path, *, task: str, model_id: str,
                     version: str, shots: int, steps: int, trained_on: str, card: Mapping[str, Any],
                     checkpoint: str | Path | None = None, arch: str = "tiny", crop: int = 32, lr: float = 1e-3,
                     seed: int = 0, license: str = "Apache-2.0") -> ModelCard:
    """A built-in brain model's recipe: ``medhub finetune`` on ``data`` (finetuning layout; from ``checkpoint`` or
    from scratch), then :func:`export_model` into ``folder``. Each model's ``train.py`` calls this."""
    from medhub.brain.finetuning import FinetuneConfig, finetune
    from medhub.learn.trainer import TrainingConfig
    from medhub.learn.unet3d import preset

    work = Path(work)
    config = FinetuneConfig(task=task, shots=shots, seed=seed, from_scratch=checkpoint is None, crop=crop,
                            batch_size=2)
    training = TrainingConfig(steps=steps, lr=lr, warmup_steps=max(1, steps // 15), checkpoint_every=steps,
                              seed=seed)
    finetune(checkpoint, data, work / "run", config, arch_config=preset(arch), training=training,
             cache=work / "cache")
    return export_model(work / "run", folder, model_id=model_id, version=version, trained_on=trained_on, card=card,
                        license=license)


def train_on_generated_brains(folder: str | Path, description: str, *, task: str, model_id: str, version: str,
                              first_seed: int, what: str, card: Mapping[str, Any], held_out: int = 8) -> ModelCard:
    """The recipe of a built-in model trained on generated brains (``brain-infarct``, ``brain-age``), run from its
    ``train.py`` with that script's command line (``--sessions``, ``--steps``, ``--checkpoint``):
    :func:`~medhub.synth.brain.write_task_dataset` (1 mm, half thick-slice), then :func:`train_and_export` on all
    sessions but ``held_out``, which the card's evaluation scores. ``what`` says what the generated sessions show."""
    import argparse

    from medhub.brain.finetuning import TASKS
    from medhub.synth.brain import write_task_dataset

    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=48)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    origin = f"finetuned from {args.checkpoint.name}" if args.checkpoint else "trained from random weights"
    with tempfile.TemporaryDirectory(prefix=f"medhub-train-{model_id}-") as work:
        data = write_task_dataset(Path(work) / "data", task, TASKS[task].sequences, args.sessions,
                                  first_seed=first_seed, out_of_domain=0.5)
        return train_and_export(
            folder, data, work, task=task, model_id=model_id, version=version, shots=args.sessions - held_out,
            steps=args.steps, checkpoint=args.checkpoint, card=card,
            trained_on=f"{args.sessions - held_out} GENERATED brain MRI sessions (medhub.synth.brain, seeds from "
                       f"{first_seed}: {what}, half of them thick-slice); {origin}, {args.steps} steps on 2 CPU "
                       "cores. No patient data.")
