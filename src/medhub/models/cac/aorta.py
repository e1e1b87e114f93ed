"""The descending aorta on non-contrast chest CT, found by its shape beside the spine.

Plain functions on arrays in the canonical orientation of :mod:`medhub.io.orientation` (axis 0 slices from the feet
up, axis 1 rows from anterior, axis 2 columns from the patient's right); HU and millimetres. Used to place aortic
wall calcium on real scans for the candidate classifier's training and the insertion benchmark.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def descending_aorta(hu: np.ndarray, heart: np.ndarray, spacing_mm: tuple[float, float, float]
                     ) -> tuple[dict[int, tuple[float, float]], float] | None:
    """The descending aorta beside the heart: per slice of the heart's extent, its centre (row, column; voxels),
    and its outer radius (mm, the median over slices); ``None`` when no plausible tube is found.

    ``hu`` and ``heart`` are in the canonical view. On non-contrast CT the aorta has the HU of the tissue round it,
    so it is found by its shape: per slice, the widest disk of tissue between -120 and 150 HU (the maximum of the
    in-plane distance to lung, bone and heart) in front of the vertebral body or beside its front half. Centres more
    than 20 mm from their median are dropped (beside the heart the aorta runs nearly straight down), the rest are
    median-filtered over 7 slices, and a slice whose own centre lies more than 10 mm off that track (it took the
    oesophagus, the azygos vein or the liver) is left out.
    """
    rows_mm, cols_mm = spacing_mm[1], spacing_mm[2]
    slices = np.flatnonzero(heart.any(axis=(1, 2)))
    found: dict[int, tuple[float, float, float]] = {}
    row_index, col_index = np.indices(hu.shape[1:])
    for k in slices:
        # an elderly vertebral body's marrow can be under 200 HU: its section is the closed, filled >= 150 HU
        bone = ndi.binary_opening(ndi.binary_fill_holes(ndi.binary_closing(hu[k] >= 150.0)))
        centre = np.argwhere(heart[k]).mean(axis=0)
        parts, n = ndi.label(bone)
        if not n:
            continue
        # the vertebral body: the largest bone section (at least 1.5 cm²) behind the heart and near its midline
        body = None
        for index, box in enumerate(ndi.find_objects(parts), start=1):
            pixels = np.argwhere(parts[box] == index) + np.array([box[0].start, box[1].start])
            r, c = pixels.mean(axis=0)
            if len(pixels) * rows_mm * cols_mm >= 150.0 and r > centre[0] and abs(c - centre[1]) * cols_mm < 45.0 \
                    and (body is None or len(pixels) > len(body)):
                body = pixels
        if body is None:
            continue
        pixels = body
        spine_col = float(np.median(pixels[:, 1]))
        front = float(pixels[np.abs(pixels[:, 1] - spine_col) * cols_mm < 10.0, 0].min())
        soft = (hu[k] > -120.0) & (hu[k] < 150.0) & ~heart[k] & ~ndi.binary_dilation(bone)
        width = ndi.distance_transform_edt(soft, sampling=(rows_mm, cols_mm))
        # its centre lies in front of the vertebral body or beside its front half, never behind it
        window = ((row_index - front) * rows_mm > -40.0) & ((row_index - front) * rows_mm < 20.0) \
            & (np.abs(col_index - spine_col) * cols_mm < 40.0)
        width = np.where(window, width, 0.0)
        r, c = np.unravel_index(int(np.argmax(width)), width.shape)
        found[int(k)] = (float(r), float(c), float(width[r, c]))
    if len(found) < 5:
        return None
    # beside the heart the descending aorta runs nearly straight down: a centre far from the median is another tube
    middle = np.median(np.array(list(found.values()))[:, :2], axis=0)
    ks = [k for k in sorted(found) if np.hypot((found[k][0] - middle[0]) * rows_mm,
                                               (found[k][1] - middle[1]) * cols_mm) <= 20.0]
    if len(ks) < 5:
        return None
    table = np.array([found[k] for k in ks])
    radius = float(np.median(table[:, 2]))
    if not 8.0 <= radius <= 22.0:
        return None
    rows = ndi.median_filter(table[:, 0], 7, mode="nearest")
    cols = ndi.median_filter(table[:, 1], 7, mode="nearest")
    on_track = np.hypot((table[:, 0] - rows) * rows_mm, (table[:, 1] - cols) * cols_mm) <= 10.0
    return {k: (float(r), float(c)) for k, r, c, keep in zip(ks, rows, cols, on_track, strict=True) if keep}, radius
