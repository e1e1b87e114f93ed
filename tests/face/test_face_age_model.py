"""The shipped ``face-age`` model: its card tells the truth about its weights, it runs on a folder of photos with
saliency overlays, goes on past photos without a face, and reads real UTKFace faces it never trained on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image
from skimage import data

from medhub.hub.card import sha256_file
from medhub.hub.registry import get_model
from tests.conftest import REPO, run_cli


def test_card_states_training_data_and_weights_hash():
    model = get_model("face-age")
    card = model.card
    assert "UTKFace" in card.training_data and card.inputs.kind == "photo"
    assert sha256_file(model.folder / card.weights.file) == card.weights.sha256
    assert (model.folder / card.weights.file).stat().st_size < 8 * 2**20


def test_runs_on_a_folder_with_saliency_and_goes_on_past_bad_photos(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.jpg", quality=92)
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(photos / "wall.png")
    (photos / "cut.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:3000])
    out = tmp_path / "out"
    done = run_cli("run", "face-age", "-i", str(photos), "-o", str(out), "--saliency")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    run = json.loads((out / "run.json").read_text())
    status = {c["case_id"]: (c["status"], c.get("reason_code")) for c in run["cases"]}
    assert status["astronaut"][0] == "ok"
    assert status["wall"] == ("failed", "no-face") and status["cut"] == ("failed", "truncated")
    record = json.loads((out / "astronaut" / "results.json").read_text())
    assert 20 < record["case"]["values"]["face_age_years"] < 70  # Eileen Collins, aged about 40 in the photo
    columns = pd.read_csv(out / "results.csv").set_index("case_id").loc["astronaut"]
    assert 150 < columns["face_x0"] < 210 and 240 < columns["face_x1"] < 300
    crop = np.asarray(Image.open(out / "astronaut" / "crop.png"))
    overlay = np.asarray(Image.open(out / "astronaut" / "saliency.png"))
    assert crop.shape == overlay.shape == (112, 112, 3) and np.abs(crop.astype(int) - overlay).mean() > 1
    assert record["model"]["weights_sha256"] == get_model("face-age").card.weights.sha256


def test_reads_held_out_utkface_adults(shared_data):
    from medhub.face.finetuning import evaluate_age
    from medhub.io.photo import Photo, read_photo

    held = pd.read_csv(REPO / "benchmarks" / "face_age_heldout.csv")
    adults = held[held["age"] >= 20].iloc[::12]
    model = get_model("face-age")
    predicted = np.array([model.predict(Photo(read_photo(shared_data / "utkface" / "images" / f), f))
                          .values["face_age_years"] for f in adults["file"]])
    result = evaluate_age(adults["age"].to_numpy(float), predicted)
    # A model that predicts the adults' median age for everyone scores about 13 years here.
    baseline = np.abs(adults["age"] - adults["age"].median()).mean()
    assert result["overall"]["mae"] < 0.75 * baseline
