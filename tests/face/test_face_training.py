"""The face models' whole path through the real CLI on generated photos: pretrain a ViT (MAE), finetune face-age
(two stages) and survival (Cox, on Gompertz outcomes), export, run on a folder with saliency; face-survival refuses
without weights. Generated "photos" carry their label in their picture (see :mod:`medhub.synth.photos`): these tests
check the plumbing and that learning happens, not face reading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medhub.synth.photos import gompertz_outcomes, write_labelled_photos
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_labelled_photos(tmp_path_factory.mktemp("photos"), 48, size=48, seed=3)


@pytest.fixture(scope="module")
def pretrained(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    done = run_cli("pretrain", "--modality", "photo", "--data", str(photos.parent / "images"), "-o", str(out),
                   "--image-size", "32", "--no-detect", "--steps", "6", "--batch-size", "8", "--warmup", "2")
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / "checkpoint.json").read_text())
    assert sidecar["modality"] == "photo" and sidecar["network"]["image_size"] == 32
    assert sidecar["photos_used"] == 48 and sidecar["crop_policy"] is None
    return out / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def face_age(photos, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("age")
    done = run_cli("finetune", "--task", "face-age", "--data", str(photos), "--checkpoint", str(pretrained),
                   "-o", str(out), "--steps", "30", "--stage2-steps", "10", "--batch-size", "16", "--no-detect",
                   "--report-by", "group", "--holdout", "0.25")
    assert done.returncode == 0, done.stderr
    assert "MAE" in done.stdout
    return out


def test_face_age_trains_in_two_stages_and_reports_held_out_mae(face_age):
    evaluation = json.loads((face_age / "evaluation.json").read_text())
    assert evaluation["data"]["holdout"] == 12 and evaluation["data"]["train"] == 36
    overall = evaluation["evaluation"]["overall"]
    assert overall["mae_low"] <= overall["mae"] <= overall["mae_high"]
    # Ages are uniform in 20-90: predicting the mean everywhere would give about 17.5 years.
    assert overall["mae"] < 17.5
    assert set(evaluation["evaluation"]["by_group"]) == {"A", "B"}
    stage1 = pd.read_csv(face_age / "stage1" / "log.csv")
    stage2 = pd.read_csv(face_age / "log.csv")
    assert len(stage1) == 30 and len(stage2) == 10
    assert stage2["lr"].max() < stage1["lr"].max()  # stage 2 starts from stage 1 at a lower rate
    held = pd.read_csv(face_age / "evaluation.csv")
    assert np.allclose(held["abs_error"], (held["predicted_age"] - held["age"]).abs(), atol=1e-4)


def test_exported_face_age_runs_on_a_folder_with_saliency(face_age, photos, tmp_path):
    model = tmp_path / "model"
    done = run_cli("export-model", str(face_age), "--id", "my-face-age", "-o", str(model))
    assert done.returncode == 0, done.stderr
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("photo_0000.png", "photo_0001.png"):
        (inputs / name).write_bytes((photos.parent / "images" / name).read_bytes())
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    done = run_cli("run", str(model), "-i", str(inputs), "-o", str(out), "--saliency", "--saliency-method",
                   "grad-cam")
    assert done.returncode != 0  # one photo failed; the others are done
    assert "broken.jpg" in done.stdout + done.stderr and "Traceback" not in done.stderr
    for case in ("photo_0000", "photo_0001"):
        record = json.loads((out / case / "results.json").read_text())
        value = record["case"]["values"]["face_age_years"]
        assert 0 < value < 130
        saliency = np.asarray(Image.open(out / case / "saliency.png"))
        assert saliency.shape == (32, 32, 3)
        assert record["model"]["weights_sha256"]
    # Same input, same output.
    again = tmp_path / "again"
    run_cli("run", str(model), "-i", str(inputs), "-o", str(again))
    first = json.loads((out / "photo_0000" / "results.json").read_text())["case"]["values"]
    second = json.loads((again / "photo_0000" / "results.json").read_text())["case"]["values"]
    assert first == second


def test_two_face_age_runs_export_as_one_ensemble_that_averages_them(face_age, photos, pretrained, tmp_path):
    second = tmp_path / "second"
    done = run_cli("finetune", "--task", "face-age", "--data", str(photos), "--checkpoint", str(pretrained),
                   "-o", str(second), "--steps", "20", "--stage2-steps", "5", "--batch-size", "16", "--no-detect",
                   "--report-by", "group", "--holdout", "0.25")
    assert done.returncode == 0, done.stderr
    models = {}
    for name, runs in (("first", [face_age]), ("second", [second]), ("both", [face_age, second])):
        models[name] = tmp_path / name / "model"
        done = run_cli("export-model", *map(str, runs), "--id", f"age-{name}", "-o", str(models[name]))
        assert done.returncode == 0, done.stderr
    sidecar = json.loads((models["both"] / "weights" / "checkpoint.json").read_text())
    assert [m["finetune"]["steps"] for m in sidecar["members"]] == [30, 20]
    assert set(sidecar["evaluation"]["by_group"]) == {"A", "B"}
    held = [pd.read_csv(run / "evaluation.csv").set_index("image") for run in (face_age, second)]
    mean = (held[0]["predicted_age"] + held[1].loc[held[0].index, "predicted_age"]) / 2
    assert sidecar["evaluation"]["overall"]["mae"] == pytest.approx((mean - held[0]["age"]).abs().mean())

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "photo_0000.png").write_bytes((photos.parent / "images" / "photo_0000.png").read_bytes())
    values = {}
    for name, model in models.items():
        out = tmp_path / name / "out"
        done = run_cli("run", str(model), "-i", str(inputs), "-o", str(out), "--saliency", "--saliency-method",
                       "grad-cam")
        assert done.returncode == 0, done.stderr
        values[name] = json.loads((out / "photo_0000" / "results.json").read_text())["case"]["values"][
            "face_age_years"]
        assert np.asarray(Image.open(out / "photo_0000" / "saliency.png")).shape == (32, 32, 3)
    assert values["both"] == pytest.approx((values["first"] + values["second"]) / 2, abs=0.011)


def test_only_face_age_runs_combine(face_age, photos, pretrained, tmp_path):
    survival = tmp_path / "survival"
    done = run_cli("finetune", "--task", "survival", "--data", str(photos), "--checkpoint", str(pretrained),
                   "-o", str(survival), "--steps", "4", "--batch-size", "16", "--no-detect")
    assert done.returncode == 0, done.stderr
    done = run_cli("export-model", str(face_age), str(survival), "--id", "mixed", "-o", str(tmp_path / "m"))
    assert done.returncode != 0 and "only face-age runs can be combined" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m" / "card.yaml").exists()


def test_survival_finetuning_learns_a_gompertz_risk(photos, pretrained, tmp_path):
    out = tmp_path / "survival"
    done = run_cli("finetune", "--task", "survival", "--data", str(photos), "--checkpoint", str(pretrained),
                   "-o", str(out), "--steps", "40", "--batch-size", "16", "--no-detect", "--holdout", "0.3")
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((out / "evaluation.json").read_text())["evaluation"]
    assert evaluation["events"] >= 2
    c = evaluation["c_index"]
    assert c["c_index_low"] <= c["c_index"] <= c["c_index_high"]
    held = pd.read_csv(out / "evaluation.csv")
    assert np.isfinite(held["risk_score"]).all() and held["risk_score"].std() > 0


def test_gompertz_outcomes_have_the_hazard_ratio_per_year_they_were_drawn_with():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 90, 4000)
    time, event = gompertz_outcomes(ages, rng)
    fit = CoxPHFitter().fit(pd.DataFrame({"age": ages, "time": time, "event": event}), "time", "event")
    assert fit.params_["age"] == pytest.approx(0.085, abs=0.01)


def test_face_survival_has_no_weights_and_says_how_to_train_it(tmp_path):
    photo = tmp_path / "face.png"
    from skimage import data

    Image.fromarray(data.astronaut()).save(photo)
    done = run_cli("run", "face-survival", "-i", str(photo), "-o", str(tmp_path / "out"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "medhub finetune --task survival" in text


def test_robustness_reports_each_perturbation_and_a_mirror_makes_no_change(face_age, photos, tmp_path):
    from medhub.face.robustness import PERTURBATIONS

    model = tmp_path / "model"
    assert run_cli("export-model", str(face_age), "--id", "my-face-age", "-o", str(model)).returncode == 0
    out = tmp_path / "robustness"
    done = run_cli("robustness", str(model), "-i", str(photos.parent / "images"), "-o", str(out), "--limit", "4")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "robustness.csv").set_index("perturbation")
    assert list(table.index) == list(PERTURBATIONS) and (table["photos"] == 4).all()
    assert (table["p95_abs_change"] >= table["mean_abs_change"] - 1e-9).all()
    # Predictions average a photo and its mirror image, so a mirrored photo reads the same.
    assert table.loc["flip", "p95_abs_change"] < 0.05
    per_photo = pd.read_csv(out / "predictions.csv")
    assert np.allclose((per_photo["brightness +20%"] - per_photo["face_age_years"]).abs().mean(),
                       table.loc["brightness +20%", "mean_abs_change"], atol=1e-6)
    assert Image.open(out / "robustness.png").size[0] > 400
    run = run_cli("run", str(model), "-i", str(photos.parent / "images" / "photo_0000.png"), "-o", str(tmp_path / "r"))
    assert run.returncode == 0
    value = json.loads((tmp_path / "r" / "photo_0000" / "results.json").read_text())["case"]["values"]
    assert value["face_age_years"] == pytest.approx(per_photo["face_age_years"][0], abs=1e-6)


def test_survival_finetuning_on_real_faces_ranks_simulated_gompertz_outcomes(shared_data, tmp_path):
    """400 real UTKFace adults, survival drawn from a Gompertz hazard driven by each one's true age (simulated:
    nothing here is about real mortality). Starting from the shipped face-age encoder (which has seen these photos
    with their ages), the Cox head must rank the held-out outcomes better than chance."""
    labels = pd.read_csv(shared_data / "utkface" / "labels.csv")
    adults = labels[labels["age"].between(20, 90)].sample(400, random_state=0)
    time, event = gompertz_outcomes(adults["age"].to_numpy(float), np.random.default_rng(1))
    table = tmp_path / "cohort.csv"
    adults.assign(time=time, event=event).to_csv(table, index=False)
    out = tmp_path / "survival"
    done = run_cli("finetune", "--task", "survival", "--data", str(table), "--images",
                   str(shared_data / "utkface" / "images"), "--checkpoint", "face-age", "-o", str(out),
                   "--steps", "60", "--batch-size", "32", "--holdout", "0.3")
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((out / "evaluation.json").read_text())["evaluation"]
    assert evaluation["c_index"]["c_index"] > 0.6



@pytest.mark.parametrize(("checkpoint", "reason"), [("no-such-model", "neither a checkpoint file nor"),
                                                    ("lung-ct", "ships no network checkpoint")])
def test_a_checkpoint_that_is_neither_a_file_nor_a_network_model_is_a_clear_error(photos, tmp_path, checkpoint,
                                                                                  reason):
    done = run_cli("finetune", "--task", "face-age", "--data", str(photos), "--checkpoint", checkpoint,
                   "-o", str(tmp_path / "out"), "--no-detect")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert checkpoint in done.stderr and reason in done.stderr


def test_age_balancing_draws_every_bin_equally_and_softens_with_the_power():
    from medhub.face.finetuning import age_balancing_weights

    ages = np.array([3, 4, 4, 22, 23, 24, 25, 26, 70.0])  # 5-year bins of 3, 3, 2 and 1 photos
    bins = np.floor(ages / 5).astype(int)
    full = age_balancing_weights(ages, 5.0)
    assert np.allclose([full[bins == b].sum() for b in np.unique(bins)], 1.0)  # every bin drawn equally often
    assert np.allclose(age_balancing_weights(ages, 5.0, power=0.0), 1.0)  # as the photos occur
    assert np.allclose(age_balancing_weights(ages, 5.0, power=0.5), 1 / np.sqrt([3, 3, 3, 3, 3, 3, 2, 2, 1]))
    adults = age_balancing_weights(ages, 5.0, min_age=20)
    assert np.all(adults[ages < 20] == 0) and np.allclose(adults[ages >= 20], full[ages >= 20])


def test_an_adults_only_stage_2_warns_on_young_readings_and_resume_runs_only_the_missing_steps(photos, pretrained,
                                                                                            tmp_path):
    run = tmp_path / "run"
    options = ["finetune", "--task", "face-age", "--data", str(photos), "--checkpoint", str(pretrained), "-o",
               str(run), "--steps", "8", "--batch-size", "8", "--no-detect", "--balance-min-age", "70"]
    done = run_cli(*options, "--stage2-steps", "4")
    assert done.returncode == 0, done.stderr
    stage1_weights = (run / "stage1" / "checkpoint.safetensors").read_bytes()
    done = run_cli(*options, "--stage2-steps", "6", "--resume")
    assert done.returncode == 0, done.stderr
    # stage 1 was finished, so it is not run again; stage 2 goes on from its step 4
    assert len(pd.read_csv(run / "stage1" / "log.csv")) == 8
    assert (run / "stage1" / "checkpoint.safetensors").read_bytes() == stage1_weights
    assert pd.read_csv(run / "log.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "checkpoint.json").read_text())["finetune"]["balance_min_age"] == 70

    model = tmp_path / "model"
    assert run_cli("export-model", str(run), "--id", "adult-age", "-o", str(model)).returncode == 0
    out = tmp_path / "out"
    done = run_cli("run", str(model), "-i", str(photos.parent / "images"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    warned = []
    for case in sorted(out.glob("photo_*"))[:8]:
        record = json.loads((case / "results.json").read_text())["case"]
        warned.append(any("learnt from adults of 70+ only" in w for w in record["warnings"]))
        assert warned[-1] == (record["values"]["face_age_years"] < 75)
    assert any(warned)  # a network this short reads most photos younger than 75


def test_an_adults_only_stage_2_without_adults_is_a_clear_error(photos, pretrained, tmp_path):
    done = run_cli("finetune", "--task", "face-age", "--data", str(photos), "--checkpoint", str(pretrained), "-o",
                   str(tmp_path / "run"), "--steps", "2", "--stage2-steps", "2", "--batch-size", "8", "--no-detect",
                   "--balance-min-age", "150")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "150" in done.stderr and "no training photo" in done.stderr


def test_a_descriptor_head_trains_on_the_crop_networks_split_and_exports_with_them(face_age, photos, tmp_path):
    head = tmp_path / "head"
    done = run_cli("finetune", "--task", "face-age", "--descriptor-head", "--data", str(photos), "-o", str(head),
                   "--steps", "30", "--batch-size", "16", "--no-detect", "--report-by", "group", "--holdout", "0.25")
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((head / "checkpoint.json").read_text())
    assert sidecar["head"]["kind"] == "descriptor" and len(sidecar["head"]["descriptor"]["sha256"]) == 64
    held = {name: pd.read_csv(run / "evaluation.csv").set_index("image") for name, run in
            (("networks", face_age), ("head", head))}
    assert set(held["head"].index) == set(held["networks"].index)  # the same held-out photos
    assert len(pd.read_csv(head / "log.csv")) == 30

    model = tmp_path / "model"
    done = run_cli("export-model", str(face_age), str(head), "--id", "age-with-head", "-o", str(model))
    assert done.returncode == 0, done.stderr
    exported = json.loads((model / "weights" / "checkpoint.json").read_text())
    assert exported["descriptor_head"]["share"] == 0.5 and len(exported["members"]) == 1
    mean = (held["networks"]["predicted_age"] + held["head"].loc[held["networks"].index, "predicted_age"]) / 2
    assert exported["evaluation"]["overall"]["mae"] == pytest.approx((mean - held["networks"]["age"]).abs().mean())
    card = (model / "card.yaml").read_text()
    assert "weights/descriptor-head.safetensors" in card and "face-recognition" in card

    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = Image.open(photos.parent / "images" / "photo_0000.png")
    photo.save(inputs / "photo.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(inputs / "mirrored.png")
    out = tmp_path / "out"
    done = run_cli("run", str(model), "-i", str(inputs), "-o", str(out))
    assert done.returncode == 0, done.stderr
    cases = {name: json.loads((out / name / "results.json").read_text())["case"] for name in ("photo", "mirrored")}
    parts = cases["photo"]["columns"]
    assert cases["photo"]["values"]["face_age_years"] == pytest.approx(
        (parts["age_from_crop_networks"] + parts["age_from_descriptor_head"]) / 2, abs=0.011)
    # Both readings average the face and its mirror image, so a mirrored photo reads the same.
    assert cases["mirrored"]["values"] == pytest.approx(cases["photo"]["values"], abs=0.011)

    alone = run_cli("export-model", str(head), "--id", "head-only", "-o", str(tmp_path / "alone"))
    assert alone.returncode != 0 and "Traceback" not in alone.stderr
    assert "descriptor head" in alone.stderr and not (tmp_path / "alone" / "card.yaml").exists()
    # These runs took the photos as given crops: there is no detector box to reframe a fallback's onto.
    done = run_cli("export-model", str(face_age), "--id", "x", "-o", str(tmp_path / "x"), "--fallback-detector",
                   "dlib-hog")
    assert done.returncode != 0 and "Traceback" not in done.stderr and "given crops" in done.stderr
