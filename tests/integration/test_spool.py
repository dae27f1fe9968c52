from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanet_node.errors import IngestError, SpoolError
from scanet_node.ingest.spool import Spool


def test_write_is_whole_and_in_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rel = Spool.relative_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(rel, b"abc" * 1000) == 3000
    assert (tmp_path / "spool/1.2/1.2.3/1.2.3.4.dcm").read_bytes() == b"abc" * 1000
    assert oct(os.stat(spool.path(rel)).st_mode & 0o777) == "0o640"
    spool.write(rel, b"new")  # a duplicate replaces the file atomically
    assert spool.path(rel).read_bytes() == b"new"
    assert list((tmp_path / "spool/.tmp").iterdir()) == []


def test_partial_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / ".tmp" / "abc.part").write_bytes(b"half")
    assert spool.remove_partial_files() == 1
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_low_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=10**18)
    with pytest.raises(IngestError) as err:
        spool.write("1.2/1.3/1.4.dcm", b"x")
    assert err.value.status == 0xA700
    assert "nearly full" in err.value.reason
    assert not (tmp_path / "1.2").exists()


def test_unwritable_spool_is_out_of_resources(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "1.2").write_text("a file where the study folder should be")
    with pytest.raises(IngestError) as err:
        spool.write("1.2/1.3/1.4.dcm", b"x")
    assert err.value.status == 0xA700
    assert err.value.reason.startswith("Out of resources: cannot write spool (")
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_spool_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(SpoolError, match="cannot create spool folder"):
        Spool(tmp_path / "f" / "spool")


def test_disk_full_is_out_of_resources(tiny_disk: Path) -> None:
    spool = Spool(tiny_disk)
    spool.write("1.2/1.3/1.4.dcm", b"x" * 100_000)
    with pytest.raises(IngestError) as err:
        spool.write("1.2/1.3/1.5.dcm", b"x" * 2_000_000)
    assert err.value.status == 0xA700
    assert "disk full (ENOSPC)" in err.value.reason
    assert not (tiny_disk / "1.2/1.3/1.5.dcm").exists()
    assert list((tiny_disk / ".tmp").iterdir()) == []
    assert (tiny_disk / "1.2/1.3/1.4.dcm").stat().st_size == 100_000
