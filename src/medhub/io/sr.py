"""DICOM Structured Report output: a TID 1500 Measurement Report (Comprehensive 3D SR) via highdicom.

Layout: one measurement group (TID 1501, image-level measurements) holding every scalar output of the model:
numeric values as NUM items with the card's concept and UCUM unit, ``str`` values as TEXT items named by
the card's concept, and free text (``extra_text``) as TEXT items named "Comment". The observer is the model
as a device (name, version, manufacturer "medhub"), the evidence is the source series and, when given, the
SEG the values were computed from.

Reproducible like :mod:`medhub.io.seg`: UIDs from (source series UID, card id, card version, "sr"), dates
from the source study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from medhub.errors import OutputError
from medhub.hub.card import ModelCard, ValueSpec
from medhub.io.seg import (
    MANUFACTURER,
    coded,
    complete_headers,
    derived_uid,
    pin_clock_values,
    save_dataset,
    source_headers,
    study_datetime,
)
from medhub.io.volume import Volume

SR_SERIES_NUMBER = 901

#: Procedure reported (TID 1500 row 3) by source modality.
PROCEDURES = {
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "PT": hd.sr.CodedConcept("82918005", "SCT", "Positron emission tomography"),
}
GENERIC_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")

COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")


def write_sr(
    values: Mapping[str, float | str],
    value_specs: Sequence[ValueSpec],
    source: Volume,
    path: str | Path,
    *,
    card: ModelCard,
    seg_path: Path | None = None,
    extra_text: Mapping[str, str] | None = None,
) -> Path:
    """Write a model's scalar outputs as a TID 1500 Measurement Report that references the source series.

    Parameters
    ----------
    values:
        Output name -> value; every name must be one of ``value_specs``. Numbers become NUM items in the
        spec's UCUM unit (NaN and infinities are refused), strings become TEXT items.
    value_specs:
        The card's value specifications (concept code and UCUM unit); values are written in this order.
    source:
        The input volume, read from DICOM.
    path:
        Output file, written atomically.
    card:
        The model card: the observer device and the algorithm identification.
    seg_path:
        A SEG written for the same input; it is added to the evidence.
    extra_text:
        Free text (e.g. a warning about the input) written as "Comment" TEXT items, ``"key: text"``.

    Raises
    ------
    OutputError
        Unknown value names, non-finite numbers, a source without DICOM headers, an unreadable SEG, or a
        file that cannot be written.
    """
    path = Path(path)
    headers = source_headers(source, path)
    specs = {spec.name: spec for spec in value_specs}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise OutputError(path, f"values {unknown} have no value specification in the card of {card.id}")
    if not values and not extra_text:
        raise OutputError(path, "nothing to report: no values and no text")

    series_uid = source.source.series_instance_uid
    measurements = []
    texts = []
    for spec in value_specs:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if isinstance(value, str):
            texts.append(hd.sr.TextContentItem(coded(spec.concept), value, "CONTAINS"))
            continue
        number = float(value)
        if not math.isfinite(number):
            raise OutputError(path, f"value {spec.name} is {number}, which DICOM SR cannot hold")
        unit = hd.sr.CodedConcept(spec.unit, "UCUM", spec.unit)
        measurements.append(hd.sr.Measurement(name=coded(spec.concept), value=number, unit=unit))
    for key, text in (extra_text or {}).items():
        texts.append(hd.sr.TextContentItem(COMMENT, f"{key}: {text}", "CONTAINS"))

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(series_uid, card, "sr", "group"), identifier=f"{card.id} outputs"[:64]
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(name=card.name[:64], version=card.version[:64]),
        measurements=measurements or None,
    )
    if texts:
        # TID 1501 has no TEXT row in highdicom's builder; a CONTAINS TEXT item is valid Comprehensive 3D SR.
        group[0].ContentSequence.extend(texts)

    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid("", card, "device"),
                name=f"{card.name} {card.version}"[:64],
                manufacturer_name=MANUFACTURER,
                model_name=card.id[:64],
            ),
        )
    )
    modality = str(headers[0].get("Modality") or source.modality or "")
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=PROCEDURES.get(modality, GENERIC_PROCEDURE),
        imaging_measurements=[group],
    )

    evidence = complete_headers(headers[:1] if source.source.frame_numbers else headers)
    if seg_path is not None:
        try:
            evidence.append(pydicom.dcmread(seg_path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise OutputError(seg_path, f"cannot read the SEG to reference ({e})") from e

    date, time = study_datetime(headers[0])
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=derived_uid(series_uid, card, "sr", "series"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=derived_uid(series_uid, card, "sr", "instance"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=f"{card.name} {card.version} measurements"[:64],
            content_date=date,
            content_time=time,
            series_date=date,
            series_time=time,
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise OutputError(path, f"cannot build the DICOM SR: {e}") from e
    pin_clock_values(sr, date, time)
    declare_private_schemes(sr, {spec.concept.scheme for spec in value_specs if spec.name in values})
    save_dataset(sr, path)
    return path


#: Private ("99" prefix) coding schemes a card may use, as (0008,0110) declares them.
PRIVATE_SCHEMES = {"99MEDHUB": ("medhub local concepts", "medhub contributors")}


def declare_private_schemes(dataset: pydicom.Dataset, schemes: set[str]) -> None:
    """Add a Coding Scheme Identification Sequence item for each private coding scheme in ``schemes`` (DICOM
    PS3.3 C.12.1: a private scheme's designator, name and responsible organization)."""
    items = []
    for scheme in sorted(schemes & PRIVATE_SCHEMES.keys()):
        item = pydicom.Dataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName, item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEMES[scheme]
        items.append(item)
    if items:
        dataset.CodingSchemeIdentificationSequence = items
