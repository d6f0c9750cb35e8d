"""OpenSDID parquet and folder readers: keys, mask rules, edge maps, dataset items and clear errors."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from maskclip_core.data import DataError, MaskCLIPDataset, load_sample, open_samples, parse_key
from maskclip_core.data.masks import edge_map
from maskclip_runtime.kernel.preprocess import PreprocessSpec, resize_and_normalize


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask_rgb(h=40, w=60):
    m = np.zeros((h, w, 3), np.uint8)
    m[10:20, 5:30] = 255
    m[0, 0] = (200, 100, 90)  # mean 130 > 127.5 -> edited
    m[0, 1] = (200, 100, 80)  # mean 126.7 -> not edited
    return m


def _write_parquet(path, struct=True, mask_size=(40, 60)):
    img, mask = _png(_image()), _png(_mask_rgb(*mask_size))
    cell = (lambda b: {"bytes": b, "path": None}) if struct else (lambda b: b)
    rows = {
        "key": ["real/sd15/real/1.jpg", "partial/sd15/fake/2.jpg", "full/sd15/fake/3.jpg"],
        "image": [cell(img)] * 3,
        "mask": [None, cell(mask), None],
        "label": [0, 1, 1],
    }
    pq.write_table(pa.table(rows), path)
    return path


def test_parse_key():
    assert parse_key("partial/sd15/fake/000651821.jpg", 1, True, "x") == ("sd15", "partial")
    assert parse_key("full/flux/fake/1.jpg", 1, False, "x") == ("flux", "full")
    assert parse_key("real/sd3/real/1.jpg", 0, False, "x") == ("sd3", "real")
    assert parse_key("img1.jpg", 1, True, "split") == ("split", "partial")


@pytest.mark.parametrize("struct", [True, False])
def test_parquet_mask_rules(tmp_path, struct):
    samples = open_samples(_write_parquet(tmp_path / "sd15.parquet", struct))
    assert [(s.generator, s.kind, s.label) for s in samples] == [
        ("sd15", "real", 0),
        ("sd15", "partial", 1),
        ("sd15", "full", 1),
    ]
    real, partial, full = (load_sample(s)[1] for s in samples)
    assert real.shape == (40, 60) and real.sum() == 0
    assert full.all()
    expected = np.zeros((40, 60), np.uint8)
    expected[10:20, 5:30] = 1
    expected[0, 0] = 1
    np.testing.assert_array_equal(partial, expected)


def test_dataset_item_uses_shared_preprocessing(tmp_path):
    samples = open_samples(_write_parquet(tmp_path / "sd15.parquet"))
    item = MaskCLIPDataset(samples, 32)[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == item["edge"].shape == (1, 32, 32)
    image, _ = load_sample(samples[1])
    np.testing.assert_array_equal(item["image"].numpy(), resize_and_normalize(image, PreprocessSpec(size=32)))
    assert item["label"].item() == 1 and item["generator"] == "sd15" and item["kind"] == "partial"
    assert 0 < item["edge"].sum() < item["mask"].numel()


def test_train_items_are_deterministic_per_epoch(tmp_path):
    samples = open_samples(_write_parquet(tmp_path / "sd15.parquet"))
    a, b = MaskCLIPDataset(samples, 32, train=True, seed=3), MaskCLIPDataset(samples, 32, train=True, seed=3)
    assert all(np.array_equal(a[1][k], b[1][k]) for k in ("image", "mask", "edge"))
    b.set_epoch(1)
    assert not all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(3))


def test_edge_map_plus_kernel():
    mask = np.zeros((11, 11), np.uint8)
    mask[5, 5] = 1
    edge = edge_map(mask)
    # A single pixel dilates to a plus with arms of 3; its complement covers everything.
    assert edge.sum() == 13 and edge[5, 2] and edge[2, 5] and not edge[4, 4]
    assert edge_map(np.ones((5, 5))).sum() == 0 and edge_map(np.zeros((5, 5))).sum() == 0


def test_folder_layout(tmp_path):
    for folder, name in (("real", "a.jpg"), ("fake/sdxl", "b.jpg"), ("fake/sdxl", "c.png")):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image()).save(tmp_path / folder / name)
    (tmp_path / "masks/sdxl").mkdir(parents=True)
    Image.fromarray(_mask_rgb()).save(tmp_path / "masks/sdxl/b.png")
    samples = {s.key: s for s in open_samples(tmp_path)}
    assert set(samples) == {f"real/{tmp_path.name}/real/a.jpg", "partial/sdxl/fake/b.jpg", "full/sdxl/fake/c.png"}
    assert load_sample(samples["partial/sdxl/fake/b.jpg"])[1].sum() == 251


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        open_samples(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no parquet files"):
        open_samples(tmp_path)
    path = _write_parquet(tmp_path / "bad.parquet", mask_size=(20, 60))
    with pytest.raises(DataError, match=r"bad\.parquet.*mask is 60x20 but image is 60x40"):
        load_sample(open_samples(path)[1])
    (tmp_path / "f" / "real").mkdir(parents=True)
    (tmp_path / "f/real/broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_sample(open_samples(tmp_path / "f")[0])
    pq.write_table(pa.table({"key": ["x"], "label": [0]}), tmp_path / "nocols.parquet")
    with pytest.raises(DataError, match=r"nocols\.parquet: missing column\(s\) image"):
        open_samples(tmp_path / "nocols.parquet")


def test_hub_name_without_datasets_is_a_clear_error():
    try:
        import datasets  # noqa: F401

        pytest.skip("`datasets` is installed")
    except ImportError:
        with pytest.raises(DataError, match="pip install datasets"):
            open_samples("nebula/OpenSDI_test", "sd15")
