"""`medhub evaluate`: medhub models, prediction folders and FOMO commands on generated tasks, every failure kind
recorded per case and scored as the worst, CIs, permutation tests, ranks and tiers."""

from __future__ import annotations

import csv
import json
import math
import textwrap

import nibabel as nib
import numpy as np
import pytest

from medhub.challenge.evaluate import evaluate, load_truth, write_evaluation
from medhub.challenge.submissions import (
    CommandSubmission,
    FolderSubmission,
    ModelSubmission,
    PredictionError,
    parse_submission,
    read_mask,
    read_value,
)
from medhub.challenge.tasks import FOMO25
from medhub.synth.brain import write_task_dataset
from tests.conftest import run_cli

RESAMPLES = 500


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """FOMO25-shaped truth: six infarct sessions (t1), four meningioma (t2), six brain-age (t3), generated at 2 mm."""
    root = tmp_path_factory.mktemp("truth")
    write_task_dataset(root / "t1", "infarct", ("flair", "adc", "dwi_b1000", "t2s"), 6, first_seed=900,
                       resolution_mm=2.0)
    write_task_dataset(root / "t2", "meningioma", ("flair", "dwi_b1000", "t2s"), 4, first_seed=910,
                       resolution_mm=2.0)
    write_task_dataset(root / "t3", "brain-age", ("t1", "t2"), 6, first_seed=920, resolution_mm=2.0)
    return root


def _folder_submission(root, truth, *, broken: bool):
    """Prediction files: the truth itself (a perfect submission), or the truth with every kind of damage."""
    for task in FOMO25.tasks:
        folder = root / task.id
        folder.mkdir(parents=True)
        for n, case in enumerate(load_truth(truth, task)):
            if task.label == "mask":
                image = nib.load(case.mask)
                mask = (np.asarray(image.dataobj) > 0).astype(np.uint8)
                if broken and n == 0:
                    mask = mask[:-1]  # wrong shape
                elif broken and n == 1:
                    mask = mask * 2  # not binary
                nib.save(nib.Nifti1Image(mask, image.affine), folder / f"{case.case_id}.nii.gz")
            elif not (broken and n == 0):  # missing
                text = "nan" if broken and n == 1 else "forty" if broken and n == 2 else f"{case.label}"
                (folder / f"{case.case_id}.txt").write_text(text + "\n")
    return root


def test_validation_is_the_fomo25_validators(tmp_path):
    (tmp_path / "a.txt").write_text("0.25\n")
    (tmp_path / "b.txt").write_text("header,prob_class_1\nsubject,0.75\n")  # what FOMO25's template writes
    (tmp_path / "c.txt").write_text("inf")
    (tmp_path / "d.txt").write_text("")
    assert read_value(tmp_path / "a.txt") == 0.25 and read_value(tmp_path / "b.txt") == 0.75
    for name, code in (("c.txt", "not-finite"), ("d.txt", "unparsable")):
        with pytest.raises(PredictionError) as caught:
            read_value(tmp_path / name)
        assert caught.value.code == code
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), affine), tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), affine), tmp_path / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 0.5, np.float32), affine), tmp_path / "soft.nii.gz")
    assert read_mask(tmp_path / "ok.nii.gz", tmp_path / "ref.nii.gz").all()
    with pytest.raises(PredictionError, match="not exactly"):
        read_mask(tmp_path / "soft.nii.gz", tmp_path / "ref.nii.gz")


def test_models_folders_and_commands_are_evaluated_and_ranked(truth, tmp_path):
    perfect = FolderSubmission(name="perfect", folder=_folder_submission(tmp_path / "perfect", truth, broken=False))
    broken = FolderSubmission(name="broken", folder=_folder_submission(tmp_path / "broken", truth, broken=True))
    command = tmp_path / "fomo" / "predict.py"
    command.parent.mkdir()
    command.write_text(textwrap.dedent('''
        import argparse, sys, time
        parser = argparse.ArgumentParser()
        for name in ("flair", "adc", "dwi_b1000", "t2s", "swi", "t1", "t2"):
            parser.add_argument(f"--{name}")
        parser.add_argument("--output", required=True)
        args = parser.parse_args()
        if "sub_001" in (args.flair or args.t1):
            sys.exit("model crashed on purpose")
        if "sub_002" in (args.flair or args.t1):
            time.sleep(30)
        if args.output.endswith(".nii.gz"):
            import nibabel as nib, numpy as np
            image = nib.load(args.flair)
            nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), args.output)
        else:
            open(args.output, "w").write("0.5" if args.adc else "50.0")
    '''))
    fomo = CommandSubmission(name="fomo", target=command.parent, time_limit_s=5)
    models = [ModelSubmission(name="brain-infarct", model="brain-infarct"),
              ModelSubmission(name="brain-age", model="brain-age")]

    evaluation = evaluate(FOMO25, [perfect, broken, fomo, *models], truth, tmp_path / "out", n_resamples=RESAMPLES)
    written = write_evaluation(evaluation, tmp_path / "out")

    table = evaluation.table
    assert table["t1_auroc"][0] == 1.0 and table["t2_dice"][0] == 1.0 and table["t3_mae"][0] == 0.0
    assert table["t3_corr"][0] == pytest.approx(1.0)
    assert not math.isnan(table["t1_auroc"][3]) and math.isnan(table["t3_mae"][3])  # brain-infarct skips t3
    assert math.isnan(table["t1_auroc"][4]) and not math.isnan(table["t3_mae"][4])  # brain-age skips t1
    cases = list(csv.DictReader(written["cases"].open()))
    reasons = {(r["submission"], r["task"], r["case"]): r["reason"] for r in cases if r["status"] != "ok"}
    assert not [key for key in reasons if key[0] in ("brain-infarct", "brain-age")]
    assert reasons[("broken", "t1", "sub_000")] == "missing"
    assert reasons[("broken", "t1", "sub_001")] == "not-finite"
    assert reasons[("broken", "t1", "sub_002")] == "unparsable"
    assert reasons[("broken", "t2", "sub_000")] == "wrong-shape"
    assert reasons[("broken", "t2", "sub_001")] == "not-binary"
    assert reasons[("fomo", "t1", "sub_001")] == "crashed" and reasons[("fomo", "t1", "sub_002")] == "timeout"
    # the worst-value policy: a missing binary prediction is the wrong certainty, a failed mask Dice 0
    broken_t2 = [r for r in cases if r["submission"] == "broken" and r["task"] == "t2"]
    assert [float(r["dice"]) for r in broken_t2[:2]] == [0.0, 0.0]
    leaderboard = json.loads(written["json"].read_text())["leaderboard"]
    assert leaderboard[0]["submission"] == "perfect" and leaderboard[0]["tier"] == 1
    low, high = evaluation.intervals["t3_mae"][1]
    assert low <= table["t3_mae"][1] <= high
    pairs = {(r["task"], r["metric"], r["a"], r["b"]): r for r in evaluation.pairwise}
    assert 0 < pairs[("t3", "mae", "perfect", "broken")]["p_value"] <= 1
    assert ("t1", "auroc", "perfect", "brain-age") not in pairs  # brain-age took no part in t1
    assert (tmp_path / "out" / "predictions" / "brain-age" / "t3" / "sub_000.txt").is_file()
    again = run_cli("leaderboard", str(written["metrics"]))
    assert again.returncode == 0 and "perfect" in again.stdout


def test_the_cli_evaluates_and_never_crashes_on_a_bad_submission(truth, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("evaluate", "-s", f"none=folder:{empty}", "-s", "age=model:brain-age", "--truth", str(truth),
                   "-o", str(tmp_path / "out"), "--resamples", "200")
    assert proc.returncode == 0, proc.stderr
    assert "leaderboard" in proc.stdout.lower() and (tmp_path / "out" / "leaderboard.html").is_file()
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["submission"] for r in rows] == ["none", "age"]


def test_submission_specs_are_parsed_by_kind(tmp_path):
    (tmp_path / "fomo").mkdir()
    (tmp_path / "fomo" / "predict.py").write_text("")
    assert isinstance(parse_submission(f"a=fomo:{tmp_path / 'fomo'}"), CommandSubmission)
    assert isinstance(parse_submission(str(tmp_path / "fomo")), CommandSubmission)
    assert isinstance(parse_submission(f"b={tmp_path}"), FolderSubmission)
    model = parse_submission("brain-age")
    assert isinstance(model, ModelSubmission) and model.name == "brain-age" and model.tasks is None
    assert parse_submission("mine=model:brain-age@t3,1").tasks == {"t1", "t3"}


def test_an_exported_fomo_predict_py_runs_directly_and_its_outputs_validate(truth, tmp_path):
    proc = run_cli("export-fomo", "brain-age", "--task", "3", "--to", str(tmp_path / "sub"))
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {"predict.py", "Apptainer.def", "requirements.txt"}
    assert "exec python /app/predict.py" in (tmp_path / "sub" / "Apptainer.def").read_text()
    assert "torch==2.13.0" in (tmp_path / "sub" / "requirements.txt").read_text()

    fomo = parse_submission(f"exported=fomo:{tmp_path / 'sub'}@3")
    assert isinstance(fomo, CommandSubmission) and fomo.tasks == {"t3"}
    evaluation = evaluate(FOMO25, [fomo, ModelSubmission(name="direct", model="brain-age")], truth, tmp_path / "out",
                          n_resamples=RESAMPLES)

    t3 = [r for r in evaluation.case_rows if r["task"] == "t3"]
    assert t3 and all(r["status"] == "ok" for r in t3), [r["message"] for r in t3]
    exported = {r["case"]: r["prediction"] for r in t3 if r["submission"] == "exported"}
    direct = {r["case"]: r["prediction"] for r in t3 if r["submission"] == "direct"}
    assert exported == pytest.approx(direct)  # the contract wraps the same model, same numbers
    # a task of another kind is refused at export, in one line
    proc = run_cli("export-fomo", "brain-age", "--task", "2", "--to", str(tmp_path / "no"))
    assert proc.returncode != 0 and "needs a mask prediction" in proc.stderr and "Traceback" not in proc.stderr
