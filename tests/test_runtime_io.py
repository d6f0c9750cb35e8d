"""Input expansion (files, folders, globs, stdin) and atomic result files."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from maskclip_runtime.inputs import expand_inputs, images_in_folder
from maskclip_runtime.outputs import (
    AtomicTextFile,
    CsvOutput,
    JsonLinesOutput,
    atomic_path,
    heat_overlay,
    read_csv_records,
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
    stdin = io.StringIO(f"{tree / 'notes.txt'}\n\n  {tree / 'a.jpg'}  \n")
    paths = expand_inputs([str(tree / "sub"), str(tree / "*.jpg"), "-", str(tree / "a.jpg")], stdin=stdin)
    # An explicit file is kept whatever its extension: a mislabelled file is reported, not skipped.
    assert _rel(paths, tree) == ["sub/c.jpeg", "sub/deeper/d.webp", "a.jpg", "notes.txt"]


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


def test_atomic_text_file_is_invisible_until_commit(tmp_path):
    target = tmp_path / "table.csv"
    out = AtomicTextFile(target)
    out.write("a,b\n")
    assert not target.exists()
    out.commit()
    assert target.read_text() == "a,b\n"
    aborted = AtomicTextFile(target)
    aborted.write("garbage")
    aborted.discard()
    assert target.read_text() == "a,b\n" and len(list(tmp_path.iterdir())) == 1


def test_mask_png_is_8_bit_probability(tmp_path):
    prob = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    save_mask_png(prob, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as png:
        assert png.mode == "L" and png.size == (16, 16)
        np.testing.assert_array_equal(np.asarray(png), np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_heat_overlay_keeps_calm_pixels_and_colours_hot_ones():
    photo = Image.new("RGB", (4, 1), (40, 80, 120))
    prob = np.array([[0.0, 0.2, 0.6, 1.0]], np.float32)
    pixels = np.asarray(heat_overlay(photo, prob), np.int16)[0]
    assert (pixels[0] == (40, 80, 120)).all() and (pixels[1] == (40, 80, 120)).all()
    assert pixels[2][0] > 90 and pixels[3][0] > pixels[2][0]  # redder as the probability rises
    assert pixels[3][1] > pixels[2][1]  # and towards yellow at the top


def test_tables_round_trip_and_torn_lines_are_skipped(tmp_path):
    records = [{"path": "a.jpg", "fake_prob": 0.25, "mask": None}, {"path": "b.jpg", "error": "b.jpg: empty file"}]
    json_out, csv_out = JsonLinesOutput(str(tmp_path / "r.jsonl")), CsvOutput(tmp_path / "r.csv")
    for record in records:
        json_out.write(record)
        csv_out.write(record)
    json_out.close()
    csv_out.close()
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"path": "c.jpg", "fake_')  # what a killed writer could leave behind
    assert read_json_lines(tmp_path / "r.jsonl") == records
    rows = read_csv_records(tmp_path / "r.csv")
    assert [(r["path"], r["fake_prob"], r["mask"], r["error"]) for r in rows] == [
        ("a.jpg", "0.25", "", ""),
        ("b.jpg", "", "", "b.jpg: empty file"),
    ]
    assert read_json_lines(tmp_path / "absent.jsonl") == [] and read_csv_records(tmp_path / "absent.csv") == []
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["mask"] is None
