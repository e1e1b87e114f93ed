"""FOMO layouts (pretraining, re-release, finetuning) and the preprocessed-session cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medhub.brain.cache import cache_sessions
from medhub.brain.layout import find_sessions, sequence_name
from medhub.errors import InputError
from medhub.synth.brain import make_brain, write_session


@pytest.fixture(scope="module")
def brains():
    return [make_brain(seed, resolution_mm=2.0, sequences=("t1", "flair")) for seed in range(3)]


def test_sequence_file_names():
    assert sequence_name("t1.nii.gz") == ("t1", 1)
    assert sequence_name("t1_2.nii.gz") == ("t1", 2)
    assert sequence_name("dwi_b1000.nii.gz") == ("dwi_b1000", 1)
    assert sequence_name("dwi_b1000_3.nii") == ("dwi_b1000", 3)
    assert sequence_name("notes.txt") is None


def test_the_pretraining_layout_with_repeats_and_the_rerelease_with_participants(tmp_path, brains):
    root = tmp_path / "fomo60k"
    write_session(root, "001", "1", brains[0])
    write_session(root, "001", "2", brains[1])
    (root / "sub_001" / "ses_2" / "t1_2.nii.gz").write_bytes((root / "sub_001" / "ses_2" / "t1.nii.gz").read_bytes())
    write_session(root / "OASIS", "7", "1", brains[2])
    (root / "OASIS" / "participants.tsv").write_text("participant_id\tage\tsex\nsub_7\t71\tF\n")
    (root / "README.txt").write_text("not a session")

    sessions = find_sessions(root)

    assert [s.key for s in sessions] == ["sub_001__ses_1", "sub_001__ses_2", "OASIS__sub_7__ses_1"]
    assert sorted(sessions[1].files) == ["flair", "t1", "t1_2"]
    assert sessions[2].dataset == "OASIS" and sessions[2].meta == {"participant_id": "sub_7", "age": "71", "sex": "F"}
    assert sessions[0].label is None and sessions[0].seg is None


def test_the_finetuning_layout_reads_labels_and_masks(tmp_path, brains):
    root = tmp_path / "task"
    write_session(root / "preprocessed", "01", "1", brains[0], labels_root=root / "labels", label="infarct")
    write_session(root / "preprocessed", "02", "1", brains[1], labels_root=root / "labels", label="seg")
    sessions = find_sessions(root)
    assert [s.label for s in sessions] == [str(int(brains[0].targets["infarct"])), None]
    assert sessions[1].seg == root / "labels" / "sub_02" / "ses_1" / "seg.nii.gz"


def test_an_empty_tree_is_refused(tmp_path):
    with pytest.raises(InputError, match="no sessions found"):
        find_sessions(tmp_path)


def test_the_cache_preprocesses_once_and_redoes_a_changed_session(tmp_path, brains):
    root = tmp_path / "task"
    for n, brain in enumerate(brains):
        write_session(root / "preprocessed", f"0{n}", "1", brain, labels_root=root / "labels", label="seg")
    sessions = find_sessions(root)
    cached = cache_sessions(sessions, tmp_path / "cache", progress=False)
    assert [c.key for c in cached] == [s.key for s in sessions]
    arrays, seg, record = cached[0].load()
    assert set(arrays) == {"flair", "t1"} and arrays["t1"].shape == record.shape == seg.shape
    assert np.isfinite(arrays["t1"]).all()
    stamps = {c.key: os.stat(c.path).st_mtime_ns for c in cached}

    again = cache_sessions(sessions, tmp_path / "cache", progress=False)
    assert {c.key: os.stat(c.path).st_mtime_ns for c in again} == stamps  # nothing redone

    touched = sessions[1].files["t1"]
    os.utime(touched, ns=(stamps[sessions[1].key] + 10**9, stamps[sessions[1].key] + 10**9))
    third = cache_sessions(sessions, tmp_path / "cache", progress=False)
    changed = [c.key for c in third if os.stat(c.path).st_mtime_ns != stamps[c.key]]
    assert changed == [sessions[1].key]
    # a session lacking a requested sequence is left out
    assert cache_sessions(sessions, tmp_path / "cache2", sequences=("t1", "adc"), progress=False) == []


def test_the_real_brats_cases_as_a_finetuning_set(shared_data, tmp_path):
    from medhub.brain.layout import brats_finetuning_layout

    cases = sorted(p for p in (shared_data / "brain_mri_brats").iterdir() if p.is_dir())
    root = brats_finetuning_layout(cases, tmp_path / "brats")
    sessions = find_sessions(root)
    assert [s.subject for s in sessions] == [c.name for c in cases]
    assert all(sorted(s.files) == ["flair", "t1c"] and s.seg is not None for s in sessions)
    cached = cache_sessions(sessions[:1], tmp_path / "cache", progress=False)
    arrays, seg, record = cached[0].load()
    # whole tumour of pat0001 (label > 0): 112 ml in the data's README; the grid is already 1 mm, so no volume change
    assert (seg > 0).sum() / 1000 == pytest.approx(112, abs=1)
    assert record.shape == arrays["flair"].shape and not (tmp_path / "brats" / "preprocessed").is_symlink()
