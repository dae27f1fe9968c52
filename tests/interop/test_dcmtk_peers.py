"""DCMTK's echoscu, storescu and dcmdump as the peers a hospital would point at the node."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import NodeFactory
from dicom_samples import ct_dataset, ct_series, iter_spool, write_files
from peers import DCMTK_ENV, dcmtk, storescu
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from scanet_node.service import Node

pytestmark = pytest.mark.dcmtk


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=DCMTK_ENV,
        check=False,
    )


def test_echoscu(node: Node) -> None:
    host, port = node.listener.address
    assert run("echoscu", "-aet", "CT01", "-aec", "SCANET", host, str(port)).returncode == 0
    refused = run("echoscu", "-aet", "CT01", "-aec", "SOMEONE", host, str(port))
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stderr


def test_storescu_series_with_realistic_size(node: Node, tmp_path: Path) -> None:
    series = ct_series(24, size=512)
    files = write_files(series, tmp_path / "in")
    storescu(node.listener.address[1], files)
    stored = sorted(iter_spool(node.spool.root))
    assert len(stored) == 24
    study = node.catalog.get_study(series[0].StudyInstanceUID)
    assert study is not None and study.series[0].num_instances == 24
    for path in stored[:3]:
        dump = run("dcmdump", "+E", str(path))
        assert dump.returncode == 0 and "(0020,000d) UI" in dump.stdout
    # Kept as received: the stored dataset equals what storescu read from disk.
    original = {ds.SOPInstanceUID: ds for ds in series}
    for path in stored:
        ds = dcmread(path)
        assert ds.PixelData == original[ds.SOPInstanceUID].PixelData


def eight_bit(ds_uid: str, series_uid: str, index: int):  # type: ignore[no-untyped-def]
    ds = ct_dataset(ds_uid, series_uid, index=index, size=64)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * 16
    return ds


@pytest.mark.parametrize(
    ("syntax", "compressor", "propose"),
    [
        (ImplicitVRLittleEndian, None, "-xi"),
        (DeflatedExplicitVRLittleEndian, None, "-xd"),
        (JPEGLosslessSV1, ("dcmcjpeg", "+e1"), "-xs"),
        (JPEGBaseline8Bit, ("dcmcjpeg", "+eb"), "-xy"),
        (JPEGLSLossless, ("dcmcjpls", "+el"), "-xt"),
        (RLELossless, ("dcmcrle",), "-xr"),
        (JPEG2000Lossless, "pydicom", "-xv"),
    ],
)
def test_storescu_transfer_syntaxes_kept_as_sent(
    node_factory: NodeFactory,
    tmp_path: Path,
    syntax: str,
    compressor: tuple[str, ...] | str | None,
    propose: str,
) -> None:
    node = node_factory()
    study, series = generate_uid(), generate_uid()
    if syntax == JPEGBaseline8Bit:
        datasets = [eight_bit(study, series, i) for i in range(3)]
    else:
        datasets = [ct_dataset(study, series, index=i, size=64) for i in range(3)]
    if compressor == "pydicom":
        for ds in datasets:
            ds.compress(syntax)
    files = write_files(datasets, tmp_path / "plain")
    if isinstance(compressor, tuple):
        compressed = []
        for path in files:
            out = path.with_suffix(".c.dcm")
            done = run(compressor[0], *compressor[1:], str(path), str(out))
            assert done.returncode == 0, done.stderr
            compressed.append(out)
        files = compressed
    storescu(node.listener.address[1], files, propose)
    stored = sorted(iter_spool(node.spool.root))
    assert len(stored) == 3
    for path in stored:
        assert dcmread(path).file_meta.TransferSyntaxUID == syntax
        assert run("dcmdump", "+E", str(path)).returncode == 0
    if syntax != JPEGBaseline8Bit:  # lossy
        # Not transcoded: what arrived decodes to the pixels that were sent.
        sent = {ds.SOPInstanceUID: ds for ds in datasets}
        for path in stored:
            ds = dcmread(path)
            assert (ds.pixel_array == sent[ds.SOPInstanceUID].pixel_array).all()


def test_negotiation_prefers_lossless_then_uncompressed(node: Node, tmp_path: Path) -> None:
    """Offered big endian, explicit and implicit little endian, we take explicit LE."""
    files = write_files(ct_series(1), tmp_path)
    storescu(node.listener.address[1], files, "-xb")
    (path,) = iter_spool(node.spool.root)
    assert dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_storescu_from_a_calling_aet_outside_the_allow_list(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(security={"allowed_calling_aets": ["PACS"]})
    files = write_files(ct_series(2), tmp_path)
    port = node.listener.address[1]
    done = storescu(port, files, check=False)
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr
    assert node.catalog.count_instances() == 0
    done = storescu(port, files, calling="PACS", check=False)
    assert done.returncode == 0
    assert node.catalog.count_instances() == 2
