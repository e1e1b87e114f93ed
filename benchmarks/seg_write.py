"""Benchmark: DICOM SEG writing, medhub ``write_seg`` against plain highdicom defaults.

Run ``python benchmarks/seg_write.py``. Builds 300 header-only CT source datasets of 512×512 in memory and a
2-segment label map (two lung-like ellipsoids), then times, best of 3 each:

* highdicom defaults with a (300, 512, 512, 2) binary array (one channel per segment), then ``save_as``;
* highdicom defaults with the (300, 512, 512) label map as input, then ``save_as``;
* medhub ``write_seg`` BINARY (the default) and LABELMAP, to a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from medhub.hub.card import Code, ModelCard
from medhub.io.seg import write_seg
from medhub.io.volume import DicomSource, Volume, affine_from_dicom

SLICES, ROWS, COLUMNS = 300, 512, 512
PIXEL_MM, SLICE_MM = 0.7, 1.0


def source_headers(slices: int) -> list[Dataset]:
    """Header-only CT Image Storage datasets (no PixelData), axial, LPS, in slice order."""
    study, series, frame = (generate_uid(entropy_srcs=["bench", k]) for k in ("study", "series", "frame"))
    headers = []
    for k in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench", "sop", str(k)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mark", "B1", "", ""
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", ""
        ds.StudyDate, ds.StudyTime = "20240101", "120000"
        ds.ImagePositionPatient = [-180.0, -180.0, -150.0 + SLICE_MM * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        headers.append(ds)
    return headers


def lung_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Two ellipsoids, labels 1 (right lung, image left) and 2 (left lung), over 80 % of the slices."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    for label, ci in ((1, 0.3), (2, 0.7)):
        inside = (
            ((k - shape[0] / 2) / (0.4 * shape[0])) ** 2
            + ((j - shape[1] / 2) / (0.35 * shape[1])) ** 2
            + ((i - ci * shape[2]) / (0.18 * shape[2])) ** 2
        ) <= 1
        labels[inside] = label
    return labels


def card() -> ModelCard:
    organ = {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
    lung = {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
    return ModelCard.model_validate(
        {
            "id": "bench-lungs", "name": "Benchmark lungs", "version": "1.0.0", "title": "Benchmark",
            "description": "Benchmark card.", "task": "segmentation",
            "inputs": {"modality": "CT", "body_part": "chest"},
            "outputs": {"segments": [
                {"label": 1, "name": "right lung", "category": organ, "type": lung,
                 "modifier": Code(value="24028007", scheme="SCT", meaning="Right")},
                {"label": 2, "name": "left lung", "category": organ, "type": lung,
                 "modifier": Code(value="7771000", scheme="SCT", meaning="Left")},
            ]},
            "intended_use": "Benchmarks.", "limitations": "None.", "license": "Apache-2.0",
        }
    )


def highdicom_defaults(headers: list[Dataset], pixel_array: np.ndarray, out: Path) -> None:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Benchmark lungs", family=codes.cid7162.ArtificialIntelligence, version="1.0.0"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in ((1, "right lung"), (2, "left lung"))
    ]
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bench",
        manufacturer_model_name="bench",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(out)


def best_of(repeats: int, cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best wall time of each case in seconds; rounds run the cases in turn, so load from other processes
    hits all of them alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    headers = source_headers(SLICES)
    labels = lung_labels((SLICES, ROWS, COLUMNS))
    stacked = np.stack([labels == 1, labels == 2], axis=-1)
    first = np.asarray(headers[0].ImagePositionPatient, float)
    affine = affine_from_dicom(first, headers[0].ImageOrientationPatient, headers[0].PixelSpacing,
                               [0.0, 0.0, SLICE_MM])
    # write_seg reads only the grid and the headers; the label map stands in for the CT voxels.
    volume = Volume(labels, affine, "CT", DicomSource(headers=headers, files=[""] * SLICES))
    model = card()
    segments = model.outputs.segments

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cases: dict[str, tuple[str, Callable[[], object]]] = {
            "highdicom defaults, (300,512,512,2) binary array": (
                "hd_stacked.dcm", lambda: highdicom_defaults(headers, stacked, out / "hd_stacked.dcm")
            ),
            "highdicom defaults, (300,512,512) label map": (
                "hd_labels.dcm", lambda: highdicom_defaults(headers, labels, out / "hd_labels.dcm")
            ),
            "medhub write_seg BINARY (default)": (
                "bin.dcm", lambda: write_seg(labels, volume, segments, out / "bin.dcm", card=model)
            ),
            "medhub write_seg LABELMAP": (
                "lm.dcm",
                lambda: write_seg(labels, volume, segments, out / "lm.dcm", card=model, labelmap=True),
            ),
        }
        results = best_of(args.repeats, {name: fn for name, (_, fn) in cases.items()})
        sizes = {name: (out / file).stat().st_size / 1e6 for name, (file, _) in cases.items()}

    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, best of {args.repeats}")
    for name, seconds in results.items():
        print(f"{name:50s} {seconds:6.2f} s  {sizes[name]:5.1f} MB")
    medhub_binary = results["medhub write_seg BINARY (default)"]
    for name in list(results)[:2]:
        print(f"{name} / medhub BINARY: {results[name] / medhub_binary:.2f}x")


if __name__ == "__main__":
    main()
