import json

import pytest
import yaml

from medhub.errors import ModelError
from medhub.hub.card import ModelCard, card_json_schema, load_card
from medhub.hub.registry import BUILTIN_MODELS, get_model


def test_every_builtin_card_validates():
    for model_id in BUILTIN_MODELS:
        card = get_model(model_id).card
        assert card.id == model_id
        for segment in card.outputs.segments:
            assert segment.type.scheme == "SCT"


def test_schema_is_json_schema_of_the_card():
    schema = json.loads(card_json_schema())
    assert schema["title"] == "ModelCard"
    assert {"id", "version", "inputs", "outputs", "intended_use"} <= set(schema["required"])


def test_invalid_card_names_file_and_field(tmp_path):
    data = yaml.safe_load((get_model("lung-ct").folder / "card.yaml").read_text())
    data["inputs"]["modality"] = "XRAY"
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError) as e:
        load_card(path)
    assert str(path) in str(e.value) and "modality" in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_segment_labels_are_refused():
    data = get_model("lung-ct").card.model_dump(mode="json")
    data["outputs"]["segments"][1]["label"] = data["outputs"]["segments"][0]["label"]
    with pytest.raises(ValueError, match="unique"):
        ModelCard.model_validate(data)
