"""Walking input trees through symbolic links: linked folders and files, loops, dangling links, duplicates."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medhub.hub.cases import discover_cases
from medhub.io.dicom import scan_dicom
from medhub.io.tree import walk_files
from medhub.synth.dicom_series import write_series
from tests.conftest import run_cli

AFFINE = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]])


def _series(folder: Path, seed: int, slices: int = 4) -> list[Path]:
    array = np.full((slices, 16, 16), -800, dtype=np.int16)
    return write_series(array, AFFINE, folder, seed=seed, patient_id=f"P{seed}", file_names="numbered")


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_plain_tree_is_walked_in_name_order_files_before_subfolders(tmp_path):
    for name in ("b.txt", "a.txt", "sub/z.txt", "sub/deeper/y.txt", "other/x.txt"):
        _touch(tmp_path / name)
    tree = walk_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in tree.files] == [
        "a.txt", "b.txt", "other/x.txt", "sub/z.txt", "sub/deeper/y.txt"]
    assert tree.summary() == []


def test_a_linked_folder_and_a_linked_file_are_followed_under_their_link_names(tmp_path):
    archive = tmp_path / "archive"
    _touch(archive / "series1" / "f1")
    _touch(archive / "loose.dcm")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "case-a").symlink_to(archive / "series1", target_is_directory=True)
    (cohort / "extra.dcm").symlink_to(archive / "loose.dcm")

    tree = walk_files(cohort)

    assert tree.files == [cohort / "extra.dcm", cohort / "case-a" / "f1"]
    assert (tree.dangling_links, tree.duplicates, tree.loops) == ([], [], [])


def test_a_link_loop_is_reported_once_and_never_followed(tmp_path):
    _touch(tmp_path / "a" / "f")
    (tmp_path / "a" / "back").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(".", target_is_directory=True)

    tree = walk_files(tmp_path)

    assert tree.files == [tmp_path / "a" / "f"]
    assert [link.name for link, _ in tree.loops] == ["back", "self"]
    assert tree.summary() == [f"2 symbolic link loops not followed: {tmp_path}/a/back -> {tmp_path}; "
                              f"{tmp_path}/a/self -> ."]


def test_a_dangling_link_is_counted_and_named(tmp_path):
    _touch(tmp_path / "real.dcm")
    (tmp_path / "gone.dcm").symlink_to(tmp_path / "deleted.dcm")
    (tmp_path / "gone-folder").symlink_to(tmp_path / "no-such-folder", target_is_directory=True)

    tree = walk_files(tmp_path)

    assert tree.files == [tmp_path / "real.dcm"]
    assert tree.dangling_links == [(tmp_path / "gone-folder", str(tmp_path / "no-such-folder")),
                                   (tmp_path / "gone.dcm", str(tmp_path / "deleted.dcm"))]
    assert tree.summary()[0].startswith(f"2 dangling symbolic links skipped: {tmp_path}/gone-folder -> ")


def test_two_ways_to_one_folder_or_file_keep_the_first_and_report_the_second_once(tmp_path):
    for k in range(5):
        _touch(tmp_path / "real" / f"f{k}")
    (tmp_path / "link1").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "zz-file-link").symlink_to(tmp_path / "real" / "f0")

    tree = walk_files(tmp_path)

    # A folder's files come before its subfolders, so the file link is the first way to f0; "link1" sorts before
    # "real", so the folder is walked once, under the link's name, and the real folder is the duplicate.
    assert tree.files == [tmp_path / "zz-file-link", *(tmp_path / "link1" / f"f{k}" for k in range(1, 5))]
    assert tree.duplicates == [(tmp_path / "real", tmp_path / "link1"),
                               (tmp_path / "link1" / "f0", tmp_path / "zz-file-link")]


def test_a_root_that_is_a_link_and_a_single_file_root(tmp_path):
    _touch(tmp_path / "data" / "f")
    (tmp_path / "root-link").symlink_to(tmp_path / "data", target_is_directory=True)
    assert walk_files(tmp_path / "root-link").files == [tmp_path / "root-link" / "f"]
    assert walk_files(tmp_path / "data" / "f").files == [tmp_path / "data" / "f"]
    (tmp_path / "dangling-root").symlink_to(tmp_path / "nothing")
    assert walk_files(tmp_path / "dangling-root").dangling_links == [(tmp_path / "dangling-root",
                                                                       str(tmp_path / "nothing"))]


def test_an_unlistable_folder_is_reported_and_the_walk_goes_on(tmp_path):
    _touch(tmp_path / "ok" / "f")
    locked = tmp_path / "locked"
    _touch(locked / "g")
    locked.chmod(0)
    try:
        tree = walk_files(tmp_path)
    finally:
        locked.chmod(0o755)
    if os.geteuid() == 0:  # root lists any folder: the walk simply finds the file
        assert tree.files == [tmp_path / "locked" / "g", tmp_path / "ok" / "f"]
    else:
        assert tree.files == [tmp_path / "ok" / "f"]
        assert tree.unreadable[0][0] == locked


def test_scan_follows_links_and_reads_each_series_once(tmp_path):
    archive = tmp_path / "archive"
    _series(archive / "s1", seed=1)
    _series(archive / "s2", seed=2)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "a").symlink_to(archive / "s1", target_is_directory=True)
    (cohort / "b").symlink_to(archive / "s1", target_is_directory=True)  # the same series twice
    (cohort / "c").mkdir()
    for f in sorted((archive / "s2").iterdir()):  # a series assembled from links to files
        (cohort / "c" / f.name).symlink_to(f)

    scan = scan_dicom(cohort)

    assert sorted(len(s.files) for s in scan.series) == [4, 4]
    assert scan.tree.duplicates == [(cohort / "b", cohort / "a")]
    found = discover_cases(cohort)
    assert [c.id for c in found.cases] == ["a", "c"]
    assert any("1 duplicate path skipped" in w and f"{cohort}/b = {cohort}/a" in w for w in found.warnings)


def test_medhub_run_on_a_tree_of_links_names_what_it_skipped(tmp_path):
    archive = tmp_path / "archive"
    _series(archive / "s1", seed=1, slices=20)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "case").symlink_to(archive / "s1", target_is_directory=True)
    (cohort / "again").symlink_to(archive / "s1", target_is_directory=True)
    (cohort / "broken").symlink_to(archive / "moved-away")
    (cohort / "case-loop").symlink_to(cohort, target_is_directory=True)

    proc = run_cli("run", "lung-ct", "-i", str(cohort), "-o", str(tmp_path / "out"), "--outputs", "json")

    # One case (the first name of the folder), whatever lung-ct makes of this tiny synthetic volume.
    record = (tmp_path / "out" / "run.json").read_text()
    assert proc.returncode in (0, 1), proc.stderr
    assert '"case_id": "again"' in record and '"case_id": "case"' not in record
    assert f"1 dangling symbolic link skipped: {cohort}/broken -> {archive}/moved-away" in proc.stderr
    assert f"1 duplicate path skipped (same real folder or file as one already found): {cohort}/case = " \
           f"{cohort}/again" in proc.stderr
    assert f"1 symbolic link loop not followed: {cohort}/case-loop -> {cohort}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_input_of_dangling_links_only_is_refused_naming_them(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x").symlink_to(tmp_path / "gone")
    proc = run_cli("run", "lung-ct", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {tmp_path}/in: no DICOM series or volume files found (1 dangling "
                                   f"symbolic link skipped: {tmp_path}/in/x -> {tmp_path}/gone)")
