"""mrlfads.atomic: a write either publishes the whole new file or leaves the old one."""
from __future__ import annotations

import os
import stat

import pytest

from mrlfads.atomic import TEMP_NAME_RE, open_atomic, replacing, temp_name, write_atomic
from mrlfads.data_loaders import schema


def test_a_write_publishes_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "sub" / "a.txt", "héllo\n")  # its folder is made
    assert path.read_text(encoding="utf-8") == "héllo\n"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["a.txt"]


def test_an_error_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = write_atomic(tmp_path / "a.json", "old")
    for exc in (ValueError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), open_atomic(path) as f:
            f.write("new, half written")
            raise exc
        assert path.read_text() == "old"
        assert os.listdir(tmp_path) == ["a.json"]


def test_a_library_writes_the_temporary_name_and_a_failure_leaves_nothing(tmp_path):
    target = tmp_path / "result.nwb"
    with replacing(target, suffix=".nwb") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".nwb" and not tmp.exists()
        tmp.write_bytes(b"written by someone else")
    assert target.read_bytes() == b"written by someone else"
    with pytest.raises(FileExistsError), replacing(target) as tmp:
        tmp.write_bytes(b"second")
        raise FileExistsError("refused after the write")
    assert target.read_bytes() == b"written by someone else"
    assert os.listdir(tmp_path) == ["result.nwb"]


def test_private_files_are_the_owners_alone_and_others_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        private = write_atomic(tmp_path / "ops.jsonl", "{}", private=True)
        shared = write_atomic(tmp_path / "report.html", "<p>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


def test_temporary_names_are_the_ones_a_dataset_reader_recognises(tmp_path):
    names = {temp_name(tmp_path / "part-00001.arrow").name for _ in range(20)}
    assert len(names) == 20  # fresh every time: two writers never share one
    for name in names:
        assert name.startswith(f".part-00001.arrow.tmp-{os.getpid()}-")
        assert TEMP_NAME_RE.match(name)
        assert schema.is_writer_file(f"shards/{name}")
    assert not TEMP_NAME_RE.match("part-00001.arrow")


def test_only_whole_file_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="'a'"), open_atomic(tmp_path / "x", "a"):
        pass
