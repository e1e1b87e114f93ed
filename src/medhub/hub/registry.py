"""Where models come from: the built-in ones, and third-party packages through entry points.

A third-party package makes its model available to ``medhub run`` by declaring, in its ``pyproject.toml``::

    [project.entry-points."medhub.models"]
    my-model = "my_package.model:MyModel"

The entry point's name is the model id; the object it points to is a class (or factory) that takes no
arguments and returns an object meeting :class:`medhub.hub.model.Model`.

A folder made by ``medhub export-model`` (a card and a finetuned checkpoint) is a model too: its path stands
where an id would.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from medhub.errors import ModelError
from medhub.hub.card import ModelCard, load_card
from medhub.hub.model import Model

ENTRY_POINT_GROUP = "medhub.models"

#: Models that ship with medhub: id -> "module:attribute".
BUILTIN_MODELS: dict[str, str] = {
    "lung-ct": "medhub.models.lung_ct:LungCT",
    "cac": "medhub.models.cac:CAC",
    "brain-tumor": "medhub.models.brain_tumor:BrainTumor",
    "brain-infarct": "medhub.models.brain_infarct:BrainInfarct",
    "brain-age": "medhub.models.brain_age:BrainAge",
    "face-age": "medhub.models.face_age:FaceAge",
    "face-survival": "medhub.models.face_survival:FaceSurvival",
}


def _load_target(target: str) -> Callable[[], Model]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def available_models() -> dict[str, str]:
    """Model id -> where it comes from (``"built-in"`` or the distribution that provides it)."""
    found = dict.fromkeys(BUILTIN_MODELS, "built-in")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.dist.name if ep.dist else ep.value
    return found


def get_card(model_id: str) -> ModelCard:
    """A model's card. For a built-in model it is read from its folder without importing the model's code (which
    may import torch), so ``medhub models`` and ``medhub info`` start fast; a plugin's card comes from the plugin."""
    if model_id not in BUILTIN_MODELS and (Path(model_id) / "card.yaml").is_file():
        return load_card(Path(model_id) / "card.yaml")
    if model_id in BUILTIN_MODELS:
        module_name = BUILTIN_MODELS[model_id].partition(":")[0]
        spec = importlib.util.find_spec(module_name)  # imports the parent packages only, not the model
        if spec is not None and spec.submodule_search_locations:
            return load_card(Path(next(iter(spec.submodule_search_locations))) / "card.yaml")
    return get_model(model_id).card


@cache
def get_model(model_id: str) -> Model:
    """Instantiate a model by id (built-ins win over a third-party package that reuses their id), or from a folder
    made by ``medhub export-model``."""
    if model_id not in BUILTIN_MODELS and Path(model_id).is_dir():
        from medhub.hub.export import exported_modality

        modality = exported_modality(model_id)
        if modality is None:
            raise ModelError(model_id, "not a model folder (no card.yaml with a finetuned checkpoint in weights/)",
                             code="unknown-model")
        if modality == "photo":
            from medhub.face.hub import FacePhotoModel

            return FacePhotoModel(model_id)
        from medhub.brain.hub import BrainTaskModel

        return BrainTaskModel(model_id)
    if model_id in BUILTIN_MODELS:
        factory = _load_target(BUILTIN_MODELS[model_id])
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == model_id]
        if not matches:
            known = ", ".join(sorted(available_models())) or "none"
            raise ModelError(model_id, f"unknown model (available: {known})", code="unknown-model")
        try:
            factory = matches[0].load()
        except Exception as e:  # a broken plugin must not take the whole CLI down
            raise ModelError(model_id, f"cannot load model plugin {matches[0].value}: {e}",
                             code="plugin-error") from e
    model = factory()
    if model.card.id != model_id:
        raise ModelError(model_id, f"model registered as {model_id!r} has card id {model.card.id!r}",
                         code="card-mismatch")
    return model
