"""The partial-volume restoration of the Agatston score: lesion groups, its trained range, shipped weights, and the
properties of its output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from medhub.hub.card import load_card, sha256_file
from medhub.models.cac.model import CAC
from medhub.models.cac.restoration import (
    DEFAULT_WEIGHTS,
    GroupRestorationNet,
    RestoredScore,
    group_patches,
    lesion_groups,
    outside_trained_range,
    restore_agatston,
    restore_scores,
    sidecar,
)

SPACING = (1.5, 0.7, 0.7)


def test_lesion_groups_join_fragments_a_voxel_apart_and_keep_distant_plaques_apart() -> None:
    mask = np.zeros((5, 20, 20), bool)
    mask[2, 5, 5] = mask[2, 5, 7] = True  # one voxel between them: one plaque cut in two by noise
    mask[2, 15, 15] = True  # 8 voxels away: another plaque
    labels = lesion_groups(mask)
    assert labels[2, 5, 5] == labels[2, 5, 7] != labels[2, 15, 15]
    assert set(np.unique(labels[mask])) == {labels[2, 5, 5], labels[2, 15, 15]}
    assert not labels[~mask].any()


def test_outside_trained_range_names_the_parameter_and_the_range() -> None:
    trained = {"pixel_spacing_mm": [0.6, 0.8], "edge_sigma_mm": [0.25, 0.58]}
    assert outside_trained_range(trained, pixel_spacing_mm=0.7, edge_sigma_mm=0.4) is None
    reason = outside_trained_range(trained, pixel_spacing_mm=3.0, edge_sigma_mm=0.4)
    assert reason == "pixel spacing 3.00 mm outside the 0.60-0.80 mm it was trained on"


def test_shipped_restoration_weights_match_the_card_and_their_sidecar() -> None:
    card = load_card(CAC.folder / "card.yaml")
    (entry,) = [extra for extra in card.extra_weights if CAC.folder / extra.file == DEFAULT_WEIGHTS]
    assert entry.sha256 == sha256_file(DEFAULT_WEIGHTS) == sidecar(DEFAULT_WEIGHTS)["sha256"]
    assert entry.trained_on.startswith("Synthetic chest CT phantoms only")
    trained = sidecar(DEFAULT_WEIGHTS)["trained_range"]
    assert set(trained) == {"slice_spacing_mm", "slice_thickness_mm", "pixel_spacing_mm", "edge_sigma_mm"}
    assert all(low < high for low, high in trained.values())


def _blurred_plaque(hu_value: float, sigma_px: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """A 3-slice, 3 x 3-pixel plaque at ``hu_value`` in 40 HU tissue, blurred in-plane; its >= 130 HU mask."""
    image = np.full((9, 32, 32), 40.0)
    image[3:6, 14:17, 14:17] = hu_value
    image = ndi.gaussian_filter(image, (0, sigma_px, sigma_px))
    return image, image >= 130


def test_restored_score_does_not_depend_on_the_in_plane_orientation() -> None:
    torch.manual_seed(0)
    net = GroupRestorationNet()  # untrained: the property comes from averaging the eight flips, not from training
    image, mask = _blurred_plaque(350.0)
    scores = []
    for flip in (lambda a: a, lambda a: a[:, ::-1], lambda a: a[:, :, ::-1], lambda a: a.transpose(0, 2, 1)):
        inputs = group_patches(np.ascontiguousarray(flip(image)), SPACING, 1.5, np.ascontiguousarray(flip(mask)),
                               0.4)
        scores.append(restore_scores(net, inputs.patches, inputs.scalars, inputs.standard))
    assert np.allclose(scores, scores[0], rtol=1e-5)


def test_shipped_restoration_raises_what_blur_lowered() -> None:
    """A faint plaque blurred below the 200 HU bin edge scores low on the image; the restored score is higher, and
    the same call gives the same number."""
    net = GroupRestorationNet()
    net.load_state_dict(torch.load(DEFAULT_WEIGHTS, weights_only=True))
    image, mask = _blurred_plaque(250.0)
    inputs = group_patches(image, SPACING, 1.5, mask, 0.45)
    restored = restore_scores(net, inputs.patches, inputs.scalars, inputs.standard)
    assert len(restored) == 1 and restored[0] > inputs.standard[0]
    assert restore_scores(net, inputs.patches, inputs.scalars, inputs.standard) == pytest.approx(restored, rel=0)


def test_a_scan_without_lesions_restores_to_zero_unless_outside_the_trained_range() -> None:
    hu = np.full((4, 16, 16), 40.0)  # no lung: its sharpness could not be measured, and need not be
    no_lesions = np.zeros(hu.shape, bool)
    assert restore_agatston(hu, SPACING, 1.5, no_lesions) == RestoredScore(0.0, None, None)
    assert restore_agatston(hu, (3.0, 3.0, 3.0), 3.0, no_lesions).reason.startswith("pixel spacing 3.00 mm")
