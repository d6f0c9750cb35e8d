"""Input expansion (files, folders, globs, stdin) and atomic result files."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from maskclip_runtime.kernel.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from maskclip_runtime.kernel.devices import Device, DeviceError, parse_device
from maskclip_runtime.kernel.inputs import expand_inputs, image_files, images_in_folder
from maskclip_runtime.present import outputs
from maskclip_runtime.present.outputs import (
    ResultsUnwritable,
    ResultTables,
    TableBusy,
    read_json_lines,
    save_mask_png,
)


@pytest.fixture
def tree(tmp_path):
    for name in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpeg", "sub/deeper/d.webp", "sub/.hidden.jpg", ".cache/e.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def _rel(paths, root):
    return [os.path.relpath(p, root) for p in paths]


def test_folders_are_searched_recursively_for_image_extensions(tree):
    assert _rel(images_in_folder(tree), tree) == ["a.jpg", "b.PNG", "sub/c.jpeg", "sub/deeper/d.webp"]


def test_files_globs_and_stdin_expand_in_order_without_duplicates(tree):
    stdin = io.StringIO(f"{tree / 'notes.txt'}\n\n{tree / 'a.jpg'}\r\n{tree}/./sub/c.jpeg\n")
    paths = expand_inputs([str(tree / "sub"), str(tree / "*.jpg"), "-", str(tree / "a.jpg")], stdin=stdin)
    # An explicit file is kept whatever its extension: a mislabelled file is reported, not skipped;
    # another spelling of a file already listed (./sub/c.jpeg) counts once.
    assert _rel(paths, tree) == ["sub/c.jpeg", "sub/deeper/d.webp", "a.jpg", "notes.txt"]


def test_stdin_names_keep_spaces_and_undecodable_bytes_with_or_without_nul_separators(tmp_path):
    names = [b" lead.jpg", b"trail .jpg", b"bad\xff.jpg", b"new\nline.jpg"]
    listing = b"".join(os.fsencode(tmp_path) + b"/" + name + b"\0" for name in names)
    stdin = io.TextIOWrapper(io.BytesIO(listing))
    paths = expand_inputs(["-"], stdin=stdin, null_separated=True)
    assert [os.fsencode(p) for p in paths] == [os.fsencode(tmp_path) + b"/" + name for name in names]
    one_per_line = b"".join(os.fsencode(tmp_path) + b"/" + name + b"\n" for name in names[:3])
    paths = expand_inputs(["-"], stdin=io.TextIOWrapper(io.BytesIO(one_per_line)))
    assert [os.fsencode(p) for p in paths] == [os.fsencode(tmp_path) + b"/" + name for name in names[:3]]


def test_recursive_glob_and_unmatched_inputs_are_kept_for_reporting(tree):
    paths = expand_inputs([str(tree / "**" / "*.jp*g"), str(tree / "nothing*.png"), str(tree / "gone.jpg")])
    assert _rel(paths, tree) == ["a.jpg", "sub/c.jpeg", "nothing*.png", "gone.jpg"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "result.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    with atomic_path(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".")
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_get_an_ordinary_files_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "plan.engine", b"plan")
        write_text_atomic(tmp_path / "manifest.json", "{}\n")
        save_mask_png(np.zeros((4, 4), np.float32), tmp_path / "mask.png")
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "plan.engine": mode,
        "manifest.json": mode,
        "mask.png": mode,
    }


def test_failed_or_interrupted_atomic_writes_leave_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "manifest.json"
    write_text_atomic(target, "old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temp:
        temp.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "new.bin", None)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert target.read_text() == "old"


def test_image_files_takes_a_folder_recursively_or_a_glob_of_images_only(tree):
    everything = ["a.jpg", "b.PNG", "sub/c.jpeg", "sub/deeper/d.webp"]
    assert _rel(image_files(tree), tree) == everything
    assert _rel(image_files(str(tree / "*")), tree) == everything  # notes.txt dropped, sub/ searched
    assert _rel(image_files(str(tree / "**")), tree) == everything  # each image once
    assert _rel(image_files(str(tree / "sub" / "**" / "*.webp")), tree) == ["sub/deeper/d.webp"]
    assert image_files(str(tree / "nothing*")) == []


@pytest.mark.parametrize(
    "name, device",
    [
        ("cpu", Device("cpu", 0)),
        (" CUDA ", Device("cuda", 0)),
        ("cuda:1", Device("cuda", 1)),
        ("tensorrt:2", Device("tensorrt", 2)),
    ],
)
def test_device_names(name, device):
    assert parse_device(name) == device
    assert parse_device(name).gpu == (device.kind != "cpu")


@pytest.mark.parametrize("name", ["gpu", "", "cuda:", "cuda:x", "cuda:-1", "cuda1", "cuda:0:1", "mps"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(DeviceError):
        parse_device(name)


def test_mask_png_is_8_bit_probability(tmp_path):
    prob = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    save_mask_png(prob, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as png:
        assert png.mode == "L" and png.size == (16, 16)
        np.testing.assert_array_equal(np.asarray(png), np.arange(256, dtype=np.uint8).reshape(16, 16))


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tables_round_trip_and_torn_lines_are_skipped(tmp_path):
    records = [{"path": "a.jpg", "fake_prob": 0.25, "mask": None}, {"path": "b.jpg", "error": "b.jpg: empty file"}]
    tables = ResultTables(str(tmp_path / "r.jsonl"), str(tmp_path / "r.csv"))
    tables.start([])
    for record in records:
        tables.write(record)
        # Each record is in the files as soon as it is written, not at close: a kill loses nothing written.
        assert read_json_lines(tmp_path / "r.jsonl")[-1] == record
    tables.close()
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"path": "c.jpg", "fake_')  # what a killed writer could leave behind
    assert read_json_lines(tmp_path / "r.jsonl") == records
    rows = _csv_rows(tmp_path / "r.csv")
    assert [(r["path"], r["fake_prob"], r["mask"], r["error"]) for r in rows] == [
        ("a.jpg", "0.25", "", ""),
        ("b.jpg", "", "", "b.jpg: empty file"),
    ]
    assert read_json_lines(tmp_path / "absent.jsonl") == []
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["mask"] is None


def test_resumed_tables_hold_exactly_the_kept_records_and_drop_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"path": "a.jpg", "fake_prob": 0.5}\n{"path": "b.jpg", "error": "x"}\n{"path": "c.jpg", "fa')
    tables = ResultTables(str(path), str(tmp_path / "r.csv"))
    previous = tables.previous_records()
    assert [r["path"] for r in previous] == ["a.jpg", "b.jpg"]
    tables.start(previous[:1])
    tables.write({"path": "d.jpg", "fake_prob": 0.1})
    tables.close()
    assert [r["path"] for r in read_json_lines(path)] == ["a.jpg", "d.jpg"]
    assert path.read_text().endswith("\n")
    assert [r["path"] for r in _csv_rows(tmp_path / "r.csv")] == ["a.jpg", "d.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.jsonl"]


def test_a_second_writer_of_the_same_table_is_refused(tmp_path):
    first = ResultTables(str(tmp_path / "r.jsonl"), None)
    first.start([])
    first.write({"path": "a.jpg"})
    with pytest.raises(TableBusy):
        ResultTables(str(tmp_path / "r.jsonl"), None)
    with pytest.raises(TableBusy):  # also when it is the CSV that is taken
        ResultTables(str(tmp_path / "other.jsonl"), str(tmp_path / "r.jsonl"))
    first.write({"path": "b.jpg"})
    first.close()
    assert [r["path"] for r in read_json_lines(tmp_path / "r.jsonl")] == ["a.jpg", "b.jpg"]
    ResultTables(str(tmp_path / "r.jsonl"), None).close()  # free again once the first run is done


def test_a_full_disk_is_one_error_and_leaves_json_and_csv_in_step(tmp_path, monkeypatch):
    tables = ResultTables(str(tmp_path / "r.jsonl"), str(tmp_path / "r.csv"))
    tables.start([])
    tables.write({"path": "a.jpg", "fake_prob": 0.5})
    real_write = os.write

    def csv_disk_full(fd, data):
        if bytes(data).startswith(b"b.jpg"):  # the CSV row of the second record: its JSON line got through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(outputs.os, "write", csv_disk_full)
    with pytest.raises(ResultsUnwritable, match="No space left on device"):
        tables.write({"path": "b.jpg", "fake_prob": 0.25})
    monkeypatch.setattr(outputs.os, "write", real_write)
    tables.close()
    assert [r["path"] for r in read_json_lines(tmp_path / "r.jsonl")] == ["a.jpg"]
    assert [r["path"] for r in _csv_rows(tmp_path / "r.csv")] == ["a.jpg"]


def test_undecodable_file_names_round_trip_through_json_and_csv(tmp_path):
    name = os.fsdecode(b"photos/bad\xff.jpg")  # as os.listdir or argv give it: a lone surrogate
    tables = ResultTables(str(tmp_path / "r.jsonl"), str(tmp_path / "r.csv"))
    tables.start([])
    tables.write({"path": name, "fake_prob": 0.5})
    tables.close()
    raw = (tmp_path / "r.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8, valid JSON
    (record,) = read_json_lines(tmp_path / "r.jsonl")
    assert os.fsencode(record["path"]) == b"photos/bad\xff.jpg"
    assert _csv_rows(tmp_path / "r.csv")[0]["path"] == "photos/bad\\udcff.jpg"


def test_a_mask_is_never_written_over_another_images_mask(tmp_path):
    prob = np.zeros((4, 4), np.float32)
    save_mask_png(prob, tmp_path / "x_mask.png", source=str(tmp_path / "a" / "x.jpg"))
    assert not outputs.made_for_another_image(tmp_path / "x_mask.png", str(tmp_path / "a" / "x.jpg"))
    assert not outputs.made_for_another_image(tmp_path / "x_mask.png", str(tmp_path / "a" / "." / "x.jpg"))
    assert outputs.made_for_another_image(tmp_path / "x_mask.png", str(tmp_path / "b" / "x.jpg"))
    Image.new("L", (2, 2)).save(tmp_path / "users_mask.png")
    assert outputs.made_for_another_image(tmp_path / "users_mask.png", str(tmp_path / "users.jpg"))
    assert not outputs.made_for_another_image(tmp_path / "absent.png", str(tmp_path / "x.jpg"))


def test_large_masks_are_resized_in_strips_that_agree_with_the_whole_image_resize(monkeypatch):
    from maskclip_runtime.kernel import preprocess

    prob = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    whole = preprocess.resize_probability_map(prob, 1234, 1500)
    monkeypatch.setattr(preprocess, "LARGE_IMAGE_PIXELS", 1000)  # "large" = this mask, for the test
    strips = preprocess.resize_probability_map(prob, 1234, 1500)
    assert strips.shape == whole.shape == (1500, 1234) and strips.dtype == np.float32
    assert np.abs(strips - whole).max() < 1e-5
    assert strips.min() >= 0.0 and strips.max() <= 1.0


def test_mask_png_levels_are_the_same_across_row_strips(tmp_path):
    prob = np.random.default_rng(1).random((2100, 3), dtype=np.float32)
    save_mask_png(prob, tmp_path / "tall.png")
    with Image.open(tmp_path / "tall.png") as png:
        np.testing.assert_array_equal(np.asarray(png), np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8))
