"""The prepared NCCT kept under the spool (imaging/ncct_cache.py), and prepare() using it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from scanet_node.imaging.model_input import ModelInput
from scanet_node.imaging.ncct_cache import NcctCache, signature
from scanet_node.imaging.prepare import prepare
from scanet_node.ingest.spool import cache_dir, purge_study_caches
from scanet_node.synth.cohort import plan_study, write_study

SIZE = 112


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A synthetic study folder, its Study Instance UID and its NCCT's folder name."""
    out = tmp_path_factory.mktemp("ncct-cache")
    manifest = write_study(out, plan_study(21, 1), cta_slice_mm=1.25)
    ncct = next(s for s in manifest["series"] if s["role"] == "ncct")
    return out / manifest["case_id"], manifest["study_instance_uid"], ncct["folder"]


def _ncct_paths(folder: Path, ncct_dir: str) -> list[Path]:
    return sorted((folder / ncct_dir).glob("*.dcm"))


def test_signature_names_the_series_as_it_is_on_disk(
    study: tuple[Path, str, str], tmp_path: Path
) -> None:
    folder, _, ncct_dir = study
    copy = tmp_path / "ncct"
    shutil.copytree(folder / ncct_dir, copy)
    paths = sorted(copy.glob("*.dcm"))
    uid = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)

    def sig(files: list[Path], **kw: object) -> str:
        options = {"series_instance_uid": uid, "method": "affine", "size": SIZE, **kw}
        return signature(files, **options)  # type: ignore[arg-type]

    first = sig(paths)
    assert sig(list(reversed(paths))) == first  # the order files are listed in does not count
    assert sig(paths, size=224) != first and sig(paths, method="syn") != first
    # One more instance (the series grew), one fewer, or one replaced: another name.
    extra = copy / "extra.dcm"
    ds = dcmread(paths[0])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(extra)
    assert sig([*paths, extra]) != first
    assert sig(paths[1:]) != first
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert sig(paths) != first


def test_prepare_puts_the_ncct_then_takes_it_and_gives_the_same_input(
    study: tuple[Path, str, str], tmp_path: Path
) -> None:
    folder, study_uid, _ = study
    cache = NcctCache(tmp_path / "cache")
    first = prepare(folder, size=SIZE, ncct_cache=cache)
    assert first.timings["ncct_cached"] == 0.0
    entries = list((tmp_path / "cache" / study_uid).glob("*.npz"))
    assert len(entries) == 1
    second = prepare(folder, size=SIZE, ncct_cache=cache)
    assert second.timings["ncct_cached"] == 1.0
    assert "brain_extraction" not in second.timings  # no NCCT work in the second
    _same_input(first, second, same_ncct=True)
    # Without the cache, the same input again.
    _same_input(first, prepare(folder, size=SIZE))

    # A stricter similarity than the entry was made under: the entry is not used.
    strict = first.qc["registration_similarity"] + 0.001
    with pytest.raises(Exception, match="registration_dissimilar"):
        prepare(folder, size=SIZE, ncct_cache=cache, min_similarity=strict)

    # A damaged entry is a miss (and goes), never a failed study.
    entries[0].write_bytes(b"not an npz")
    again = prepare(folder, size=SIZE, ncct_cache=cache)
    assert again.timings["ncct_cached"] == 0.0
    _same_input(first, again)
    assert len(list((tmp_path / "cache" / study_uid).glob("*.npz"))) == 1


def test_a_grown_ncct_is_prepared_anew(study: tuple[Path, str, str], tmp_path: Path) -> None:
    folder, study_uid, ncct_dir = study
    copy = tmp_path / "study"
    shutil.copytree(folder, copy)
    cache = NcctCache(tmp_path / "cache")
    prepare(copy, size=SIZE, ncct_cache=cache)
    # One more NCCT instance arrives (a slice sent again under a new SOP Instance UID).
    ds = dcmread(_ncct_paths(copy, ncct_dir)[0])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(copy / ncct_dir / "late.dcm")
    grown = prepare(copy, size=SIZE, ncct_cache=cache)
    assert grown.timings["ncct_cached"] == 0.0
    assert len(list((tmp_path / "cache" / study_uid).glob("*.npz"))) == 2


def test_purging_a_study_removes_what_was_derived_from_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    kept, purged = generate_uid(), generate_uid()
    for uid in (kept, purged):
        (cache_dir(spool, "ncct") / uid).mkdir(parents=True)
        (cache_dir(spool, "ncct") / uid / "abc.npz").write_bytes(b"x")
    assert purge_study_caches(spool, purged) == 1
    assert not (cache_dir(spool, "ncct") / purged).exists()
    assert (cache_dir(spool, "ncct") / kept / "abc.npz").is_file()
    assert purge_study_caches(spool, purged) == 0
    assert purge_study_caches(tmp_path / "nothing-here", kept) == 0


def test_a_claim_keeps_a_second_worker_out(tmp_path: Path) -> None:
    cache = NcctCache(tmp_path)
    uid = generate_uid()
    with cache.claim(uid, "abc123") as first:
        assert first
        with cache.claim(uid, "abc123") as second:
            assert not second
        with cache.claim(uid, "def456") as other:
            assert other
    with cache.claim(uid, "abc123") as after:
        assert after


def _same_input(a: ModelInput, b: ModelInput, *, same_ncct: bool = False) -> None:
    # Registrations are seeded, but ITK's threads may add up a metric in another order: two
    # runs differ a little at the brain's edge (mean 0.001 of the 0..1 range).
    if same_ncct:  # the NCCT's half came from the cache: the very same
        np.testing.assert_array_equal(a.tensor[0], b.tensor[0])
    for channel in (0, 1):
        assert np.abs(a.tensor[channel] - b.tensor[channel]).mean() < 0.01
    assert a.qc["brain_coverage"] == pytest.approx(b.qc["brain_coverage"], abs=0.01)
    assert a.reasons == b.reasons
    assert a.ncct_shape == b.ncct_shape
    np.testing.assert_array_equal(a.ncct_affine, b.ncct_affine)
