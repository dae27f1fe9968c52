"""Pixel data of the synthetic CT images in the transfer syntaxes a node must read.

Explicit VR Little Endian (native), RLE Lossless (pydicom's encoder) and JPEG Lossless,
Non-Hierarchical, First-Order Prediction (Process 14 SV1), which pydicom cannot encode and
python-gdcm can.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Final

import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless

logger = logging.getLogger(__name__)

TRANSFER_SYNTAXES: Final = (ExplicitVRLittleEndian, RLELossless, JPEGLosslessSV1)


def check_encodable(transfer_syntax: str) -> None:
    """Raise ValueError unless images can be written in ``transfer_syntax`` here."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    if transfer_syntax == JPEGLosslessSV1 and importlib.util.find_spec("gdcm") is None:
        raise ValueError("JPEG Lossless needs python-gdcm to encode; it is not installed")


def set_pixel_data(ds: Dataset, stored: npt.NDArray[Any], transfer_syntax: str) -> None:
    """Put ``stored`` into ``ds`` in ``transfer_syntax``."""
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        ds["PixelData"].is_undefined_length = False
    elif transfer_syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    elif transfer_syntax == JPEGLosslessSV1:
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([_jpeg_lossless(stored, ds)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")


def _jpeg_lossless(stored: npt.NDArray[Any], ds: Dataset) -> bytes:
    """One frame as JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1).

    pydicom has no encoder for it; GDCM's ImageChangeTransferSyntax has (python-gdcm, imported
    by name so that type checking does not depend on it being installed).
    """
    gdcm: Any = importlib.import_module("gdcm")

    # gdcm.ImageWriter owns the gdcm.Image; keep it alive while the image is used.
    writer = gdcm.ImageWriter()
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(ds.Columns), int(ds.Rows), 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2)
    )
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            1,
            int(ds.BitsAllocated),
            int(ds.BitsStored),
            int(ds.HighBit),
            int(ds.PixelRepresentation),
        )
    )
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(
        stored.astype("<i2" if stored.dtype.kind == "i" else "<u2").tobytes()
    )
    image.SetDataElement(element)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG Lossless")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    if fragments is None or fragments.GetNumberOfFragments() < 1:
        raise RuntimeError("GDCM returned no JPEG Lossless fragments")
    return b"".join(
        fragments.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
        for i in range(fragments.GetNumberOfFragments())
    )
