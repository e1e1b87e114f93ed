"""Fast decoding of compressed DICOM frames: JPEG 2000, JPEG-LS and lossless JPEG with imagecodecs.

pydicom's decoder plugins for these syntaxes (pylibjpeg-openjpeg, pyjpegls, pylibjpeg-libjpeg) hold the GIL, so
a volume's slices decode one at a time whatever the thread pool. imagecodecs wraps the same kinds of libraries
(OpenJPEG, CharLS, libjpeg-turbo) and releases the GIL, so slices decode on every core (the candidates and their
figures: ``benchmarks/dicom_decoders.py`` and benchmarks/RESULTS.md, "Which decoder").

The pixels must be the ones pydicom gives. :func:`decode_frame_into` therefore takes only the cases where they
are identical (lossless or exactly specified decoding, or the same library; one sample per pixel, the codestream's
precision equal to *Bits Stored*, the frame's shape and sample size as the data set says) and returns ``False``
for anything else, which the caller then decodes with pydicom: a damaged stream, too, so that its error message
stays pydicom's. Sign and unused-bit corrections are left to the caller, which applies them to both paths alike.
Lossy JPEG (baseline, extended) is not taken: another IDCT may round differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.encaps import generate_frames

#: Transfer syntax UID -> the imagecodecs codec that decodes it exactly as pydicom's plugin does.
FAST_CODECS: dict[str, str] = {
    "1.2.840.10008.1.2.4.90": "jpeg2k",  # JPEG 2000 Image Compression (Lossless Only)
    # JPEG 2000, lossless or lossy: both paths wrap OpenJPEG 2.5, whose irreversible wavelet gives the same
    # pixels (checked on the real CT and in the tests, which compare the two paths on every syntax).
    "1.2.840.10008.1.2.4.91": "jpeg2k",
    "1.2.840.10008.1.2.4.80": "jpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "jpegls",  # JPEG-LS Near-Lossless: the decoder's reconstruction is exact by standard
    "1.2.840.10008.1.2.4.57": "ljpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "ljpeg",  # JPEG Lossless, First-Order Prediction (Process 14, SV1)
}

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_UNDEFINED_LENGTH = b"\xff\xff\xff\xff"
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size marker
_JPEG_SOF = {"jpegls": 0xF7, "ljpeg": 0xC3}  # SOF55 (JPEG-LS), SOF3 (lossless, Huffman)


def read_single_frame(path: str | Path, pixel_offset: int) -> bytes | None:
    """The one encapsulated frame of a single-frame file whose Pixel Data element starts at ``pixel_offset``
    (its fragments joined); ``None`` when the element is not encapsulated or cannot be parsed."""
    with open(path, "rb") as fp:
        fp.seek(pixel_offset)
        data = fp.read()
    # Encapsulated Pixel Data is always explicit VR: tag, "OB", two reserved bytes, undefined length.
    if data[:4] != _PIXEL_DATA_TAG or data[8:12] != _UNDEFINED_LENGTH:
        return None
    try:
        return next(generate_frames(data[12:], number_of_frames=1))
    except Exception:  # a damaged encapsulation: pydicom's own path reports it
        return None


def decode_frame_into(frame: bytes, transfer_syntax: str, out: np.ndarray, bits_stored: int) -> bool:
    """Decode one compressed frame into ``out`` (rows x columns, the data set's dtype) without the GIL.

    Returns ``False``, leaving ``out`` to be overwritten, when this path would not give pydicom's pixels
    (see the module docstring); the values written are the stored values, before any sign or unused-bit
    correction.
    """
    codec = FAST_CODECS.get(str(transfer_syntax))
    if codec is None:
        return False
    layout = _jpeg2k_layout(frame) if codec == "jpeg2k" else _jpeg_layout(frame, _JPEG_SOF[codec])
    if layout is None:
        return False
    precision, components = layout
    if components != 1 or precision != bits_stored or precision > 8 * out.dtype.itemsize:
        return False
    import imagecodecs  # imported here: the native-only and the pydicom paths never need it

    decode = imagecodecs.jpeg2k_decode if codec == "jpeg2k" else (
        imagecodecs.jpegls_decode if codec == "jpegls" else imagecodecs.jpeg8_decode)
    try:
        decoded = decode(frame)
    except Exception:  # a damaged stream: pydicom's own path reports it
        return False
    if decoded.shape != out.shape or decoded.dtype.itemsize != out.dtype.itemsize:
        return False
    # A bit-for-bit copy: a 16-bit codestream of signed data decodes as uint16, as pydicom's plugins give it.
    out.view(decoded.dtype)[...] = decoded
    return True


def _jpeg2k_layout(frame: bytes) -> tuple[int, int] | None:
    """(precision of component 0, number of components) from a JPEG 2000 codestream's SIZ marker segment."""
    start = frame.find(_J2K_SIZ, 0, 4096)  # a JP2 wrapper puts a few boxes before the codestream
    if start < 0 or len(frame) < start + 43:
        return None
    siz = start + 2  # the SIZ marker
    components = int.from_bytes(frame[siz + 38 : siz + 40], "big")
    ssiz = frame[siz + 40]
    return (ssiz & 0x7F) + 1, components


def _jpeg_layout(frame: bytes, sof: int) -> tuple[int, int] | None:
    """(sample precision, number of components) from a JPEG stream's start-of-frame segment of kind ``sof``;
    ``None`` when the stream has another kind of frame (lossy DCT, arithmetic coding) or is malformed."""
    if frame[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(frame):
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if marker != sof or position + 10 > len(frame):
                return None
            return frame[position + 4], frame[position + 9]
        position += 2 + length
    return None
