"""A second, independent lung segmentation to compare ``lung-ct`` with: SimpleITK filters only, no medhub code.

It stands in for "a tool run elsewhere" (TotalSegmentator, lungmask...), whose weights cannot be downloaded here:

    python scripts/simpleitk_lungs.py CT [CT ...] --out FOLDER

For each CT (NIfTI, NRRD, MHA, or a DICOM series folder) it writes ``FOLDER/<name>.nii.gz``, a label map with
1 = right lung and 2 = left lung, and ``FOLDER/labels.yaml``, the mapping ``medhub compare`` needs. The method is
the textbook one: air below -400 HU, minus the air connected to the in-plane border (outside the body), the two
largest remaining components (or one split at the body's midline when the lungs touch) after a small opening,
holes filled slice by slice; right and left from the patient coordinates (LPS x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LABELS_YAML = """name: simpleitk-lungs
labels:
  1: {name: Right lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "24028007", scheme: SCT, meaning: Right}, color_rgb: [250, 200, 60]}
  2: {name: Left lung, type: {value: "39607008", scheme: SCT, meaning: Lung},
      modifier: {value: "7771000", scheme: SCT, meaning: Left}, color_rgb: [60, 220, 220]}
"""


def read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def segment(image: sitk.Image) -> sitk.Image:
    air = sitk.BinaryThreshold(image, -2000, -400, 1, 0)
    components = sitk.ConnectedComponent(air)
    array = sitk.GetArrayViewFromImage(components)  # (z, y, x)
    # Air touching the in-plane border is outside the body; the top and bottom slices may cut through the lungs.
    border = np.unique(np.concatenate([array[:, 0].ravel(), array[:, -1].ravel(), array[:, :, 0].ravel(),
                                       array[:, :, -1].ravel()]))
    inside = np.isin(array, border, invert=True) & (array > 0)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    mask = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1])
    relabelled = sitk.RelabelComponent(sitk.ConnectedComponent(mask), minimumObjectSize=5000)
    labels = sitk.GetArrayFromImage(relabelled)
    lungs = np.isin(labels, [1, 2]) if labels.max() >= 2 else labels == 1
    for z in range(lungs.shape[0]):  # vessels inside the lungs
        filled = sitk.BinaryFillhole(sitk.GetImageFromArray(lungs[z].astype(np.uint8)))
        lungs[z] = sitk.GetArrayViewFromImage(filled) > 0
    # Patient x (LPS: +x is the patient's left) of every voxel column decides right or left.
    x_index = np.arange(lungs.shape[2], dtype=np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    x_mm = image.GetOrigin()[0] + direction[0, 0] * image.GetSpacing()[0] * x_index
    if labels.max() >= 2 and direction[0, 0] != 0:
        first = labels == 1
        centre_first = x_mm[np.nonzero(first)[2]].mean()
        right = first if centre_first < x_mm[np.nonzero(labels == 2)[2]].mean() else labels == 2
        out = np.where(lungs, 2, 0).astype(np.uint8)
        out[right & lungs] = 1
    else:
        midline = np.median(x_mm[np.nonzero(lungs)[2]])
        out = np.where(lungs, np.where(x_mm[None, None, :] < midline, 1, 2), 0).astype(np.uint8)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labels.yaml").write_text(LABELS_YAML)
    for path in args.ct:
        name = path.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
            name = name.removesuffix(suffix)
        sitk.WriteImage(segment(read(path)), str(args.out / f"{name}.nii.gz"), useCompression=True)
        print(args.out / f"{name}.nii.gz")


if __name__ == "__main__":
    main()
