"""Decoding, skipping and packing of training images."""
import numpy as np
import pytest
import torch
from PIL import Image

from fitgap.data import (ImageError, PlanBatchSampler, PlannedWindows, WindowDataset, collate_planned,
                         decode_rgb, list_images, summarize_skipped, to_rgb_uint8)
from fitgap.plan import PlanSpec
from fractions import Fraction

from imaging import write_images, write_odd_images


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_odd_images(str(tmp_path_factory.mktemp("odd")))


@pytest.mark.parametrize("kind", ["good", "full", "cmyk", "sixteen", "rgba", "grey", "palette", "large"])
def test_decodes_to_rgb_uint8(odd, kind):
    a = decode_rgb(odd[kind])
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.flags["C_CONTIGUOUS"]


def test_sixteen_bit_is_scaled_not_clipped(odd):
    a = decode_rgb(odd["sixteen"])
    ref = np.asarray(Image.open(odd["good"]))[:, :, 0]
    assert np.abs(a[:, :, 0].astype(int) - ref).max() <= 1
    assert (a[:, :, 0] == a[:, :, 1]).all()


def test_grey_and_rgba_keep_values(odd):
    good = decode_rgb(odd["good"])
    assert np.array_equal(decode_rgb(odd["rgba"]), good)
    g = decode_rgb(odd["grey"])
    assert (g[:, :, 0] == g[:, :, 2]).all()


@pytest.mark.parametrize("kind,reason", [("truncated", "unreadable"), ("empty", "empty"),
                                         ("text", "unreadable")])
def test_bad_files_raise_image_error(odd, kind, reason):
    with pytest.raises(ImageError, match=reason):
        decode_rgb(odd[kind])


def test_decompression_bomb_guard_stays_on(odd, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large"):
        decode_rgb(odd["good"])


@pytest.mark.parametrize("variant", ["420", "422", "444", "progressive", "grey", "cmyk", "exif3", "exif6", "exif8"])
def test_jpeg_decode_equals_pillows_pixels(tmp_path, variant):
    """JPEGs are decoded by torchvision (faster); the pixels must be Pillow's, bit for bit."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).resize((140, 90), Image.BICUBIC)
    kw = {"quality": 88}
    if variant in ("422", "444"):
        kw["subsampling"] = {"422": 1, "444": 0}[variant]
    if variant == "progressive":
        kw["progressive"] = True
    if variant == "grey":
        img = img.convert("L")
    if variant == "cmyk":
        img = img.convert("CMYK")
    if variant.startswith("exif"):
        exif = img.getexif()
        exif[0x0112] = int(variant[4:])
        kw["exif"] = exif
    path = str(tmp_path / f"{variant}.jpg")
    img.save(path, **kw)
    fast, ref = decode_rgb(path), decode_rgb(path, jpeg="pillow")
    assert fast.shape == ref.shape and fast.dtype == np.uint8 and np.array_equal(fast, ref)
    if variant in ("exif6", "exif8"):
        assert fast.shape[:2] == (140, 90)  # turned upright
    with open(path, "rb") as f:
        data = f.read()
    assert np.array_equal(decode_rgb(data), ref)  # bytes, as read from a shard
    with pytest.raises(ImageError, match="truncated"):
        decode_rgb(data[: len(data) // 2])


def test_float_and_int_modes():
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    a = to_rgb_uint8(f)
    assert a.dtype == np.uint8 and a[-1, -1, 0] == 255 and a[0, 0, 0] == 0


def test_dataset_substitutes_and_counts(odd):
    paths = [odd["truncated"], odd["tiny"], odd["good"]]
    ds = WindowDataset(paths)
    from fitgap.data import Slot

    # index 0 (truncated) -> candidates 0, (0 + 7919) % 3 = 2 (good)
    window, skipped = ds[(0, Slot(window=40, seed=1))]
    assert window.shape == (40, 40, 3)
    assert [s[0] for s in skipped] == [odd["truncated"]]
    # index 1 (tiny) -> candidates 1, 0 (truncated), 2 (good)
    window, skipped = ds[(1, Slot(window=40, seed=1))]
    assert [s[0] for s in skipped] == [odd["tiny"], odd["truncated"]]
    assert "too small" in skipped[0][1] and window.shape == (40, 40, 3)
    s = summarize_skipped(skipped)
    assert s["count"] == 2 and s["files"] == 2 and s["reasons"] == {"too small": 1, "unreadable": 1}


def test_all_unusable_raises_clearly(odd):
    ds = WindowDataset([odd["empty"], odd["text"]])
    from fitgap.data import Slot

    from fitgap.errors import InputError

    with pytest.raises(InputError, match="no usable image"):  # one line for the user, no traceback
        ds[(0, Slot(window=8, seed=0))]


def test_list_images_folder_and_file(tmp_path):
    paths = write_images(str(tmp_path / "a" / "b"), 3)
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert list_images(str(tmp_path / "a")) == sorted(paths)
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\n" + "\n".join(p.replace(str(tmp_path) + "/", "") for p in paths) + "\n")
    assert list_images(str(lst)) == paths
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "nope"))


def test_sampler_and_collate(tmp_path):
    paths = write_images(str(tmp_path), 10)
    spec = PlanSpec([Fraction(3, 2), Fraction(4, 3)], patch=8, images=4)
    sampler = PlanBatchSampler(len(paths), spec, rank=0, world_size=1, seed=0, steps_per_epoch=5)
    ds = PlannedWindows(WindowDataset(paths))
    sampler.set_epoch(0)
    batches = [collate_planned([ds[i] for i in b]) for b in sampler]
    assert len(batches) == 5
    b = batches[0]
    assert b["pixels"].dtype == torch.uint8 and b["corners"].shape == (16, 3)
    assert b["offsets"].tolist()[0] == 0 and b["sizes"].shape == (4, 2)
    # resuming at step 3 gives the same batches 3 and 4
    sampler.set_epoch(0, start_step=3)
    again = [collate_planned([ds[i] for i in b]) for b in sampler]
    assert len(again) == 2
    for x, y in zip(batches[3:], again):
        assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["labels"], y["labels"])
    # another epoch, another order
    sampler.set_epoch(1)
    other = [collate_planned([ds[i] for i in b]) for b in sampler]
    assert not torch.equal(other[0]["pixels"], batches[0]["pixels"])


def test_decoded_image_cache_gives_identical_windows(tmp_path):
    from fitgap.data import Slot

    paths = write_images(str(tmp_path), 3)
    plain, cached = WindowDataset(paths), WindowDataset(paths, cache_images=2)
    for i in (0, 1, 2, 0, 1):
        a, _ = plain[(i, Slot(window=30, seed=i))]
        b, _ = cached[(i, Slot(window=30, seed=i))]
        assert np.array_equal(a, b)
    assert len(cached._cache) == 2


def test_retry_candidates_visit_every_image_whatever_the_size():
    from fitgap.data import retry_stride

    for n in (1, 2, 3, 7919, 2 * 7919, 7920, 100):
        s = retry_stride(n)
        assert len({(5 + k * s) % n for k in range(n)}) == n, n
