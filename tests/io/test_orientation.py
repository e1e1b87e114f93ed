"""Canonical orientation: permutations and flips only, round trips, and an affine that keeps every voxel in place."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medhub.io.orientation import (
    CANONICAL_DIRECTION,
    IDENTITY,
    apply_canonical,
    canonical_transform,
    canonical_volume,
    reoriented,
    undo_canonical,
)
from medhub.io.volume import Volume


def test_canonical_transform_of_known_directions():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, size=(3, 4, 5))
    direction = np.array([[0, 0, -1], [0, 1, 0], [-1, 0, 0]], float)  # (z down, y, x to the right)
    tr = canonical_transform(direction)
    assert tr == ((0, 1, 2), (True, False, True))
    assert np.array_equal(undo_canonical(apply_canonical(a, tr), tr), a)
    direction = np.eye(3)  # axis 0 along x, axis 1 along y, axis 2 along z
    assert canonical_transform(direction) == ((2, 1, 0), (False, False, False))
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)  # axis 0 along y, axis 1 along x
    tr = canonical_transform(direction)
    assert tr == ((2, 0, 1), (False, False, False))
    assert np.array_equal(undo_canonical(apply_canonical(a, tr), tr), a)
    assert canonical_transform(CANONICAL_DIRECTION) == IDENTITY


def _canonical_reference() -> Volume:
    rng = np.random.default_rng(1)
    affine = np.eye(4)
    affine[:3, :3] = CANONICAL_DIRECTION * np.array([2.5, 0.7, 0.8])  # axis k step along its LPS axis
    affine[:3, 3] = (-120.0, -90.0, -300.0)
    return Volume(rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16), affine, modality="CT")


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, True), (True, True, True)])
def test_canonical_volume_undoes_any_storage_order(perm, flips):
    reference = _canonical_reference()
    stored = reoriented(reference, (perm, flips))
    canonical, tr = canonical_volume(stored)
    assert np.array_equal(canonical.array, reference.array)
    assert np.allclose(canonical.affine, reference.affine)
    assert canonical.spacing == pytest.approx(reference.spacing)
    assert canonical.array.flags.c_contiguous
    assert np.array_equal(undo_canonical(canonical.array, tr), stored.array)


def test_canonical_volume_is_free_for_standard_axial_storage():
    reference = _canonical_reference()
    canonical, tr = canonical_volume(reference)
    assert tr == IDENTITY and canonical is reference
