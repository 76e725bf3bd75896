"""Reduce a DICOM header to the allow-listed fields (DESIGN.md, Privacy).

One extraction path for every source: the C-STORE receiver and the folder
ingester hand a pydicom ``Dataset`` to :func:`metadata_from_dataset`; a DICOM
JSON model object (Kafka topic, JSONL file) goes through the same validation.
For the JSON model the allow-listed elements are read directly when each is
plainly well formed (the dictionary VR, a list of strings, or of finite
non-negative numbers for DS): about 40x cheaper than ``Dataset.from_json``
(~1.2 ms a header), which is what capped header intake near 1,000/s. Anything
else (another VR, ``InlineBinary``, a string where a number belongs, a negative
number, two spellings of one tag...) still goes through pydicom, so every
rejection keeps the exact reason it had before. Patient names, birth dates
and free-text attributes are read only to derive an age band, and are never
copied into the event.

Control characters: a kept value (an allow-listed or identifier attribute) with a
NUL or another C0 control character is refused ("field 'Manufacturer' contains a
NUL byte"), never stored. Trailing NUL and space padding is removed first
(PS3.5 pads UI values with NUL; some devices pad other strings with it too); in
the DICOM JSON model there is no padding, so any control character in a wanted
value is refused. Reasons name the attribute, never its value.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.multival import MultiValue

from connectors.untrusted import check_text, find_control_characters, shown
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import DicomMetadataEvent, SourcePosition

#: Attributes stored as values (device and acquisition fields).
ALLOWED_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "StudyDate",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ConvolutionKernel",
    "SliceThickness",
    "KVP",
    "PixelSpacing",
    "MagneticFieldStrength",
    "BodyPartExamined",
    "ViewPosition",
    "PatientSex",
)
#: Attributes stored only as keyed-HMAC pseudonyms.
IDENTIFIER_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "PatientID",
    "AccessionNumber",
    "StationName",
    "InstitutionName",
)

#: Read only to derive the age band; never stored.
DERIVATION_KEYWORDS: tuple[str, ...] = ("PatientAge", "PatientBirthDate")
_WANTED_TAGS = frozenset(
    f"{tag_for_keyword(kw):08X}"
    for kw in (*ALLOWED_KEYWORDS, *IDENTIFIER_KEYWORDS, *DERIVATION_KEYWORDS)
)
_WANTED_ORDER = tuple(sorted(_WANTED_TAGS))
#: Tag (8 upper-case hex digits) -> (keyword, dictionary VR) of every wanted attribute.
#: What connectors.untrusted refuses in a kept value (C0 controls, lone surrogates).
_CONTROL = re.compile("[\x00-\x1f\ud800-\udfff]")
_WANTED: dict[str, tuple[str, str]] = {
    f"{tag_for_keyword(kw):08X}": (kw, dictionary_VR(kw))
    for kw in (*ALLOWED_KEYWORDS, *IDENTIFIER_KEYWORDS, *DERIVATION_KEYWORDS)
}

#: Longest value kept per text field (the widths of the study/device columns).
#: Multi-valued strings joined with "\\" have no bound of their own: Philips
#: SoftwareVersions often pass 200 characters.
TEXT_WIDTHS: dict[str, int] = {
    "Modality": 16,
    "Manufacturer": 128,
    "ManufacturerModelName": 128,
    "SoftwareVersions": 128,
    "ConvolutionKernel": 64,
    "BodyPartExamined": 64,
    "ViewPosition": 16,
}

AGE_BAND_WIDTH = 10
AGE_BAND_TOP = 90  # everything from 90 up is one band, as in HIPAA Safe Harbor


def age_band(years: int) -> str:
    """Decade band ("40-49"), with one open band for 90 and over."""
    if years < 0:
        raise InvalidRecord(f"patient age must not be negative, got {years}")
    if years >= AGE_BAND_TOP:
        return f"{AGE_BAND_TOP}+"
    low = (years // AGE_BAND_WIDTH) * AGE_BAND_WIDTH
    return f"{low}-{low + AGE_BAND_WIDTH - 1}"


def _age_years_from_as(value: str) -> int:
    """Parse a DICOM Age String ("045Y", "006M", "012W", "003D")."""
    value = value.strip()
    if len(value) != 4 or not value[:3].isdigit() or value[3] not in "DWMY":
        raise InvalidRecord("PatientAge is not a DICOM age string like '045Y'")
    number, unit = int(value[:3]), value[3]
    return {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}[unit]


def _parse_da(value: Any, keyword: str) -> date | None:
    text = str(value).strip()
    if not text:
        return None
    if len(text) != 8 or not text.isdigit():
        # The value itself is not echoed: a birth date must never reach a dead letter.
        raise InvalidRecord(f"{keyword} is not a DICOM date YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as exc:
        raise InvalidRecord(f"{keyword} is not a valid date") from exc


def _unpadded(value: Any) -> str:
    return str(value).rstrip("\x00 ").lstrip(" ")


def _text(ds: Dataset | Mapping[str, Any], keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(_unpadded(v) for v in value)
    else:
        text = _unpadded(value).strip()
    check_text(text, keyword)
    width = TEXT_WIDTHS.get(keyword)
    return (text[:width] if width else text) or None


def _number(ds: Dataset | Mapping[str, Any], keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{keyword} {shown(value)} is not a number") from exc
    if not math.isfinite(number) or number < 0:  # NaN, infinite or negative
        raise InvalidRecord(f"{keyword} {shown(value)} is out of range (must be finite and >= 0)")
    return number


def _age_band(ds: Dataset | Mapping[str, Any], study_date: date | None) -> str | None:
    age = ds.get("PatientAge")
    if age:
        return age_band(_age_years_from_as(str(age)))
    birth = ds.get("PatientBirthDate")
    if birth and study_date is not None:
        born = _parse_da(birth, "PatientBirthDate")
        if born is None:
            return None
        years = (
            study_date.year
            - born.year
            - ((study_date.month, study_date.day) < (born.month, born.day))
        )
        return age_band(years)
    return None


def metadata_from_dataset(
    ds: Dataset | Mapping[str, Any], position: SourcePosition | None = None
) -> DicomMetadataEvent:
    """The allow-listed, privacy-reduced header of ``ds``.

    Raises only InvalidRecord: pydicom converts values lazily and can raise
    almost anything on a malformed one, which becomes "malformed value in the
    DICOM header (<error type>)".
    """
    with warnings.catch_warnings():
        # pydicom converts lazily and warns (quoting the value) about invalid
        # ones; we validate what we use and dead-letter with our own reason.
        warnings.simplefilter("ignore")
        return _metadata_guarded(ds, position)


def _metadata_guarded(
    ds: Dataset | Mapping[str, Any], position: SourcePosition | None
) -> DicomMetadataEvent:
    """:func:`_metadata` raising only InvalidRecord (and MemoryError)."""
    try:
        return _metadata(ds, position)
    except (InvalidRecord, MemoryError):
        raise
    except RecursionError as exc:
        raise InvalidRecord("DICOM header nests sequences too deeply") from exc
    except Exception as exc:  # pydicom converts values lazily, raising anything
        raise InvalidRecord(f"malformed value in the DICOM header ({type(exc).__name__})") from exc


def _metadata(
    ds: Dataset | Mapping[str, Any], position: SourcePosition | None
) -> DicomMetadataEvent:
    study_uid = _text(ds, "StudyInstanceUID")
    if not study_uid:
        raise InvalidRecord("DICOM header has no StudyInstanceUID (0020,000D)")
    study_date = _parse_da(ds.get("StudyDate", ""), "StudyDate")
    sex = _text(ds, "PatientSex")
    if sex is not None:
        sex = sex.upper()
        if sex not in ("M", "F", "O"):
            raise InvalidRecord(f"PatientSex {shown(sex)} must be M, F or O")
    return DicomMetadataEvent(
        study_instance_uid=study_uid,
        patient_id=_text(ds, "PatientID"),
        accession_number=_text(ds, "AccessionNumber"),
        station_name=_text(ds, "StationName"),
        institution_name=_text(ds, "InstitutionName"),
        modality=_text(ds, "Modality"),
        study_date=study_date,
        manufacturer=_text(ds, "Manufacturer"),
        manufacturer_model_name=_text(ds, "ManufacturerModelName"),
        software_versions=_text(ds, "SoftwareVersions"),
        convolution_kernel=_text(ds, "ConvolutionKernel"),
        slice_thickness=_number(ds, "SliceThickness"),
        kvp=_number(ds, "KVP"),
        pixel_spacing=_number(ds, "PixelSpacing"),
        magnetic_field_strength=_number(ds, "MagneticFieldStrength"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        patient_sex=sex,
        age_band=_age_band(ds, study_date),
        position=position,
    )


def metadata_from_dicom_json(
    obj: Any, position: SourcePosition | None = None
) -> DicomMetadataEvent:
    """Parse one header in the DICOM JSON model (PS3.18 F.2).

    Only the attributes we use are handed to pydicom: a real header has hundreds
    of elements (and possibly inline binary data) that we would parse only to
    throw away. Raises only InvalidRecord.

    The fast path (:func:`_event_direct`) takes a header whose tags are all upper
    case and whose wanted elements are plainly valid; anything else goes the
    reference way (:func:`_metadata_from_dicom_json_reference`), which gives
    every reason.
    """
    if isinstance(obj, dict):
        try:
            keys: str | None = "".join(obj)
        except TypeError:  # a key that is not a string (not from JSON)
            keys = None
        if keys is not None and keys == keys.upper():
            # every tag is already upper case (the norm): look the wanted ones up
            # instead of upper-casing the hundreds of tags a real header has
            wanted = {tag: obj[tag] for tag in _WANTED_ORDER if tag in obj}
            event = _event_direct(wanted, position)
            if event is not None:
                return event
    return _metadata_from_dicom_json_reference(obj, position)


def _metadata_from_dicom_json_reference(
    obj: Any, position: SourcePosition | None = None
) -> DicomMetadataEvent:
    """What :func:`metadata_from_dicom_json` returns or raises, the long way."""
    if not isinstance(obj, dict):
        raise InvalidRecord("a dicom-metadata record must be a JSON object in the DICOM JSON model")
    wanted = {k: v for k, v in obj.items() if isinstance(k, str) and k.upper() in _WANTED_TAGS}
    direct = _read_directly(wanted)
    if direct is not None:  # well formed and free of control characters
        # plain values, no pydicom: no warning to silence
        return _metadata_guarded(direct, position)
    for key, element in wanted.items():
        reason = find_control_characters(element, _keyword(key), free_text=False)
        if reason is not None:
            raise InvalidRecord(_short_reason(reason, key))
    with warnings.catch_warnings():
        # pydicom warns about values it finds invalid (a bad date); we validate
        # the fields we use ourselves and dead-letter with a clear reason.
        warnings.simplefilter("ignore")
        try:
            ds = Dataset.from_json(wanted)
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:  # pydicom raises many types for malformed JSON models
            # The message may quote a value (an identifier): name the error type only.
            raise InvalidRecord(
                f"not a valid DICOM JSON model header ({type(exc).__name__})"
            ) from exc
        return metadata_from_dataset(ds, position)


_TEXT_KEYWORDS = {
    "StudyInstanceUID": "study_instance_uid",
    "PatientID": "patient_id",
    "AccessionNumber": "accession_number",
    "StationName": "station_name",
    "InstitutionName": "institution_name",
    "Modality": "modality",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model_name",
    "SoftwareVersions": "software_versions",
    "ConvolutionKernel": "convolution_kernel",
    "BodyPartExamined": "body_part_examined",
    "ViewPosition": "view_position",
    "PatientSex": "patient_sex",
}
_NUMBER_KEYWORDS = {
    "SliceThickness": "slice_thickness",
    "KVP": "kvp",
    "PixelSpacing": "pixel_spacing",
    "MagneticFieldStrength": "magnetic_field_strength",
}
_DIGITS = frozenset("0123456789")


def _plain_date(items: list[Any]) -> date | Literal[False] | None:
    """A DA element's date, None when empty, False when not plainly valid."""
    if not items:
        return None
    if len(items) > 1:
        return False
    text = items[0].strip()
    if not text:
        return None
    if len(text) != 8 or not _DIGITS.issuperset(text):
        return False
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False


def _event_direct(
    wanted: dict[str, Any], position: SourcePosition | None
) -> DicomMetadataEvent | None:
    """The event :func:`metadata_from_dicom_json` returns, when every wanted element is
    plainly well formed and every value plainly valid; else None (the reference way
    then parses it, or names what is wrong). ``wanted`` has upper-case tags, each once.

    The fast path of issue 11: no pydicom, no per-field helper calls, one
    control-character scan over all kept text.
    """
    fields: dict[str, Any] = {}
    texts: list[str] = []
    birth: list[Any] = []
    age: list[Any] = []
    study_date: Any = None
    for tag, element in wanted.items():
        vr, code, name, width = _PLAN[tag]
        if type(element) is not dict or element.get("vr") != vr:
            return None
        size = len(element)
        if size == 1:  # "vr" alone: no value
            items: list[Any] = _NO_VALUE
        elif size == 2:
            items = element.get("Value")  # type: ignore[assignment]
            if type(items) is not list:  # (None also when "Value" is missing)
                return None
        else:
            return None
        if code == _NUMBER:
            for item in items:
                if type(item) not in (int, float) or not 0 <= item < math.inf:
                    return None
            fields[name] = float(items[0]) if items else None
            continue
        for item in items:
            if type(item) is not str:
                return None
        texts += items
        if code == _TEXT:
            if not items:
                text = ""
            elif len(items) == 1:
                text = items[0].strip()
            else:
                text = "\\".join(item.strip(" ") for item in items)
            fields[name] = (text[:width] if width else text) or None
        elif code == _DATE:
            study_date = _plain_date(items)
            if study_date is False:
                return None
        elif code == _AGE:
            age = items
        else:  # PatientBirthDate
            birth = items
    if texts and _CONTROL.search("".join(texts)):
        return None
    if not fields.get("study_instance_uid"):
        return None
    sex = fields.get("patient_sex")
    if sex is not None:
        sex = fields["patient_sex"] = sex.upper()
        if sex not in ("M", "F", "O"):
            return None
    band: str | None = None
    if len(age) > 1:  # as _age_band: several values are no age string
        return None
    if age and age[0]:  # as _age_band: a non-empty PatientAge decides
        value = age[0].strip()
        if len(value) != 4 or not _DIGITS.issuperset(value[:3]) or value[3] not in "DWMY":
            return None
        number = int(value[:3])
        unit = value[3]
        years = {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}[unit]
        band = age_band(years)
    elif birth and study_date is not None:
        born = _plain_date(birth)
        if born is False or (born is not None and born > study_date):
            return None  # the reference says why
        if born is not None:
            years = (
                study_date.year
                - born.year
                - ((study_date.month, study_date.day) < (born.month, born.day))
            )
            band = age_band(years)
    return DicomMetadataEvent(**fields, study_date=study_date, age_band=band, position=position)


_NO_VALUE: list[Any] = []
_TEXT, _NUMBER, _DATE, _AGE, _BIRTH = range(5)


#: Tag -> (dictionary VR, how it is read, event field, width) for :func:`_event_direct`.
def _read_plan() -> dict[str, tuple[str, int, str, int | None]]:
    plan: dict[str, tuple[str, int, str, int | None]] = {}
    derived = {"StudyDate": _DATE, "PatientAge": _AGE, "PatientBirthDate": _BIRTH}
    for tag, (keyword, vr) in _WANTED.items():
        if keyword in _TEXT_KEYWORDS:
            plan[tag] = (vr, _TEXT, _TEXT_KEYWORDS[keyword], TEXT_WIDTHS.get(keyword))
        elif keyword in _NUMBER_KEYWORDS:
            plan[tag] = (vr, _NUMBER, _NUMBER_KEYWORDS[keyword], None)
        else:
            plan[tag] = (vr, derived[keyword], keyword, None)
    return plan


_PLAN = _read_plan()


def _read_directly(wanted: dict[str, Any]) -> dict[str, Any] | None:
    """Keyword -> value as ``Dataset.from_json(wanted).get(keyword)`` would give it.

    None when any element is not plainly well formed or a value holds a
    control character: the caller then checks and parses it the long way
    (control-character scan, pydicom), so every reason stays what it was.
    A value is a str (one value), a list (several), a float (DS) or ""
    (no value).
    """
    values: dict[str, Any] = {}
    for key, element in wanted.items():
        known = _WANTED.get(key.upper())
        if known is None or type(element) is not dict:
            return None
        keyword, vr = known
        if keyword in values or element.get("vr") != vr or len(element) > 2:
            return None
        items = element.get("Value", [])
        if len(element) == 2 and "Value" not in element:
            return None
        if type(items) is not list:
            return None
        if not items:
            values[keyword] = ""
            continue
        if vr == "DS":
            for item in items:
                if type(item) not in (int, float) or not 0 <= item < math.inf:
                    return None
            numbers = [float(item) for item in items]
            values[keyword] = numbers[0] if len(numbers) == 1 else numbers
        else:
            for item in items:
                if type(item) is not str or _CONTROL.search(item):
                    return None
            values[keyword] = items[0] if len(items) == 1 else list(items)
    return values


def _keyword(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16)) or tag.upper()
    except ValueError:
        return tag


def _short_reason(reason: str, tag: str) -> str:
    """``field 'Manufacturer' contains ...`` for any place inside the element."""
    marker = " contains "
    _, _, rest = reason.partition(marker)
    return f"field {_keyword(tag)!r}{marker}{rest}" if rest else reason


def dataset_to_dicom_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model of ``ds`` (used by producers and the synthetic feed)."""
    result: dict[str, Any] = json.loads(ds.to_json())
    return result


__all__ = [
    "ALLOWED_KEYWORDS",
    "IDENTIFIER_KEYWORDS",
    "age_band",
    "dataset_to_dicom_json",
    "metadata_from_dataset",
    "metadata_from_dicom_json",
]
