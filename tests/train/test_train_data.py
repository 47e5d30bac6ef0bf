"""Dataset layouts, the grouped stratified split and the decode cache."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import make_variants as mv
import numpy as np
import pytest
import torch

import bonefrac.train.data as data
from bonefrac.datasets import Record, content_digest, load_dataset, load_split, save_split, split_dataset
from bonefrac.errors import DatasetError
from bonefrac.paths import cache_dir
from bonefrac.preprocess import letterbox_image, read_for_model
from bonefrac.spec import ModelSpec
from bonefrac.train import distributed as data_distributed
from bonefrac.train.data import CachedImages, DecodeCache, TrainingSet, WholeImages, item_seed, training_loader


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- layouts
def test_fracatlas_layout(fixtures_dir: Path, fixture_rows: list[dict[str, str]]) -> None:
    records = load_dataset(fixtures_dir)
    assert [r.key for r in records] == [row["filename"] for row in fixture_rows]
    by_key = {r.key: r for r in records}
    for row in fixture_rows:
        r = by_key[row["filename"]]
        assert Path(r.path) == fixtures_dir / "images" / row["filename"] and Path(r.path).is_file()
        assert r.label == int(row["fractured"]) and r.region == row["body_region"]
        assert r.group == row["dup_group"] and r.hardware == int(row["hardware"])
        assert len(r.boxes) == len(list(filter(None, row["boxes"].split(";"))))
        assert (len(r.boxes) > 0) == (r.label == 1)  # only fractured images have boxes
    assert by_key["IMG0002385.jpg"].boxes == [[263.0, 150.0, 274.5, 163.0], [279.8, 144.7, 292.1, 158.9]]
    assert by_key["IMG0001763.jpg"].group == by_key["IMG0002615.jpg"].group == "dup08"
    assert Counter(r.label for r in records) == {1: 7, 0: 7}


def test_class_folder_layout(fixtures_dir: Path, tmp_path: Path, grey: np.ndarray) -> None:
    images = sorted((fixtures_dir / "images").glob("*.jpg"))
    rows = {r.key: r.label for r in load_dataset(fixtures_dir)}
    root = tmp_path / "xrays"
    for i, image in enumerate(images):  # any depth below the class folders
        sub = root / ("fractured" if rows[image.name] else "not_fractured") / ("deeper" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, sub / image.name)
    mv.dicom(root / "not_fractured" / "IM000001", grey, bits_stored=8)  # extension-less DICOM counts
    (root / "fractured" / "notes.txt").write_text("not an image")  # ignored
    records = load_dataset(root)
    assert len(records) == len(images) + 1
    assert [r.path for r in records] == sorted(r.path for r in records)
    for r in records:
        assert r.label == (Path(r.path).relative_to(root).parts[0] == "fractured")
        assert r.label == rows.get(Path(r.path).name, 0)
        assert r.key == Path(r.path).relative_to(root).as_posix()  # unique even when file names repeat


def test_csv_layout(fixtures_dir: Path, tmp_path: Path) -> None:
    images = sorted((fixtures_dir / "images").glob("*.jpg"))[:4]
    (tmp_path / "imgs").mkdir()
    for image in images[:3]:
        shutil.copy(image, tmp_path / "imgs" / image.name)
    rows = [
        [f"imgs/{images[0].name}", "1", "hand", "g1"],
        [f"imgs/{images[1].name}", "yes", "", "g1"],
        [f"imgs/{images[2].name}", "negative", "leg", ""],
        [str(images[3]), "0", "hip", ""],  # absolute path
    ]
    table = write_csv(tmp_path / "list.csv", ["path", "label", "body_region", "group"], rows)
    records = load_dataset(table)
    assert [r.path for r in records] == [str(tmp_path / row[0]) for row in rows[:3]] + [str(images[3])]
    assert [r.label for r in records] == [1, 1, 0, 0]
    assert [r.region for r in records] == ["hand", "unknown", "leg", "hip"]
    assert [r.group for r in records] == ["g1", "g1", "", ""]


def test_csv_written_by_excel_with_a_byte_order_mark(fixtures_dir: Path, tmp_path: Path) -> None:
    images = sorted((fixtures_dir / "images").glob("*.jpg"))[:2]
    table = write_csv(tmp_path / "excel.csv", ["path", "label"], [[str(images[0]), "1"], [str(images[1]), "0"]], True)
    assert table.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [r.label for r in load_dataset(table)] == [1, 0]


def test_one_class_only_warns(fixtures_dir: Path, tmp_path: Path) -> None:
    image = next((fixtures_dir / "images").glob("*.jpg"))
    table = write_csv(tmp_path / "pos.csv", ["path", "label"], [[str(image), "1"]])
    with pytest.warns(UserWarning, match="only one class present"):
        assert len(load_dataset(table)) == 1


def malformed_fracatlas(tmp_path: Path, header: list[str], rows: list[list[str]]) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    write_csv(tmp_path / "labels.csv", header, rows)
    return tmp_path


def folders(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir()
    return root


def copy_base_image(dest: Path) -> Path:
    return Path(shutil.copy(mv.FIXTURES / "images" / mv.BASE_IMAGE, dest))


MALFORMED = {
    "missing_path": (lambda d: d / "nowhere", "no such dataset folder or CSV file"),
    "plain_folder": (lambda d: copy_base_image(d / "x.jpg").parent, "not a dataset"),
    "only_fractured_folder": (lambda d: folders(d, "fractured"), "not a dataset"),
    "empty_class_folders": (lambda d: folders(d, "fractured", "not_fractured"), "the dataset has no images"),
    "labels_without_fractured_column": (
        lambda d: malformed_fracatlas(d, ["filename", "label"], [["a.jpg", "1"]]),
        "needs 'filename' and 'fractured' columns",
    ),
    "labels_header_only": (
        lambda d: malformed_fracatlas(d, ["filename", "fractured"], []),
        "the dataset has no images",
    ),
    "label_not_binary": (
        lambda d: malformed_fracatlas(d, ["filename", "fractured"], [["a.jpg", "1"], ["b.jpg", "maybe"]]),
        "labels.csv row 3: label 'maybe' is not 0/1",
    ),
    "malformed_box": (
        lambda d: malformed_fracatlas(d, ["filename", "fractured", "boxes"], [["a.jpg", "1", "1 2 x 4"]]),
        "labels.csv row 2: could not convert",
    ),
    "malformed_hardware": (
        lambda d: malformed_fracatlas(d, ["filename", "fractured", "hardware"], [["a.jpg", "1", "yes"]]),
        "labels.csv row 2: invalid literal",
    ),
    "empty_filename": (
        lambda d: malformed_fracatlas(d, ["filename", "fractured"], [["", "1"]]),
        "labels.csv row 2: empty filename",
    ),
    "csv_without_label_column": (
        lambda d: write_csv(d / "t.csv", ["path", "class"], [["a.jpg", "1"]]),
        "needs 'path' and 'label' columns",
    ),
    "csv_empty_path": (
        lambda d: write_csv(d / "t.csv", ["path", "label"], [["a.jpg", "1"], ["", "0"]]),
        "t.csv row 3: empty path",
    ),
    "csv_not_text": (lambda d: copy_base_image(d / "data.csv"), "not a UTF-8 CSV file"),
    "image_given_as_dataset": (lambda d: copy_base_image(d / "x.jpg"), "not a UTF-8 CSV file"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_layouts_raise_dataset_error(case: str, tmp_path: Path) -> None:
    make, expected = MALFORMED[case]
    path = make(tmp_path)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    message = str(caught.value)
    assert expected in message and "\n" not in message


# ---------------------------------------------------------------- split
def grouped_records(n_groups: int = 120, seed: int = 0) -> list[Record]:
    """Groups of 1-4 byte-identical images (one label per group), about 20% fractured."""
    rng = np.random.default_rng(seed)
    records = []
    for g in range(n_groups):
        label = int(rng.random() < 0.2)
        size = int(rng.integers(1, 5))
        group = f"dup{g:03d}" if size > 1 else ""
        records += [Record(f"/x/g{g:03d}_{i}.jpg", label, group=group) for i in range(size)]
    return records


def assert_groups_on_one_side(records: list[Record], split: dict[str, str]) -> None:
    sides = defaultdict(set)
    for r in records:
        if r.group:
            sides[r.group].add(split[r.key])
    assert sides and all(len(s) == 1 for s in sides.values())


def test_split_keeps_groups_together_and_is_stratified() -> None:
    records = grouped_records()
    split = split_dataset(records, val_fraction=0.2, seed=0)
    assert set(split) == {r.key for r in records} and set(split.values()) == {"train", "val"}
    assert_groups_on_one_side(records, split)
    val = [r for r in records if split[r.key] == "val"]
    assert 0.14 < len(val) / len(records) < 0.26
    overall = np.mean([r.label for r in records])
    assert abs(np.mean([r.label for r in val]) - overall) < 0.06


def test_split_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    records = grouped_records()
    a = split_dataset(records, seed=3)
    assert split_dataset(list(records), seed=3) == a
    assert split_dataset(records, seed=4) != a
    save_split(a, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == a


def test_split_refuses_a_fraction_too_small_for_the_dataset(fixtures_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"--val-fraction 0.01 holds out 1 in 100: too few images"):
        split_dataset(load_dataset(fixtures_dir), val_fraction=0.01)


def test_content_digest_names_the_bytes_not_the_file(fixtures_dir: Path, tmp_path: Path) -> None:
    original = fixtures_dir / "images" / "IMG0000505.jpg"
    digest = content_digest(original)
    assert len(digest) == 16 and int(digest, 16) >= 0
    (tmp_path / "elsewhere").mkdir()
    copy = Path(shutil.copy(original, tmp_path / "elsewhere" / "renamed.jpeg"))
    assert content_digest(copy) == digest  # another name and folder: the same image
    changed = bytearray(copy.read_bytes())
    changed[len(changed) // 2] ^= 1
    copy.write_bytes(bytes(changed))
    assert content_digest(copy) != digest  # one bit of the content: another image
    assert content_digest(fixtures_dir / "images" / "IMG0001271.jpg") != digest


def test_cache_dir_is_read_from_the_environment_at_each_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a" and DecodeCache().root == tmp_path / "a"
    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "b"
    monkeypatch.delenv("BONEFRAC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "bonefrac"


@pytest.mark.dataset
def test_split_of_real_fracatlas(fracatlas_dir: Path) -> None:
    records = load_dataset(fracatlas_dir)
    split = split_dataset(records, val_fraction=0.2, seed=0)
    assert split_dataset(records, val_fraction=0.2, seed=0) == split
    assert len(split) == len(records) == 3264  # file names are unique keys
    assert_groups_on_one_side(records, split)
    val = [r for r in records if split[r.key] == "val"]
    assert 0.18 < len(val) / len(records) < 0.22
    overall = np.mean([r.label for r in records])
    assert abs(np.mean([r.label for r in val]) - overall) < 0.02


# ---------------------------------------------------------------- decode cache
@pytest.fixture
def counted_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths _decode_one is called for (in-process builds, workers=1)."""
    calls: list[str] = []
    real = data._decode_one

    def counting(args: tuple[str, int, str]) -> str | None:
        calls.append(args[0])
        return real(args)

    monkeypatch.setattr(data, "_decode_one", counting)
    return calls


def copy_images(fixtures_dir: Path, dest: Path, n: int = 3) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = ["IMG0000505.jpg", "IMG0001271.jpg", "IMG0002553.jpg", "IMG0004228.jpg"][:n]
    return [str(shutil.copy2(fixtures_dir / "images" / name, dest / name)) for name in names]


@pytest.mark.filterwarnings("ignore::bonefrac.io.read.ImageReadWarning")  # IMG0004228.jpg is truncated
def test_cache_builds_letterboxed_uint8(fixtures_dir: Path, tmp_path: Path) -> None:
    paths = copy_images(fixtures_dir, tmp_path / "img", n=4)  # includes a truncated JPEG
    cache = DecodeCache(tmp_path / "cache", size=64)
    assert cache.build(paths, workers=1, progress=False) == {}
    for p in paths:
        arr = cache.load(p)
        assert arr.dtype == np.uint8 and arr.shape == (64, 64)
        predict_input = letterbox_image(read_for_model(p, ModelSpec(image_size=64)), 64)[0]  # what predict feeds
        assert np.array_equal(arr, np.round(predict_input * 255).astype(np.uint8))
        # and what training feeds it (data.CachedImages, WholeImages), bit for bit: thresholds chosen on cached
        # validation predictions hold for predict
        assert np.array_equal(torch.from_numpy(arr).float().div_(255).numpy(), predict_input)
    assert len(list((tmp_path / "cache" / "s64").glob("*.npy"))) == 4
    assert not list((tmp_path / "cache" / "s64").glob("*.tmp*"))


def test_cache_holds_the_radiograph_as_pillow_sees_it(fixtures_dir: Path, tmp_path: Path) -> None:
    """Independent of bonefrac's reader and letterbox: each entry is the file, shrunk to fit and centred on
    zero padding (a transposed, flipped or off-centre picture correlates far below 0.99)."""
    from PIL import Image, ImageOps

    paths = copy_images(fixtures_dir, tmp_path / "img", n=3)  # both orientations, none truncated
    cache = DecodeCache(tmp_path / "cache", size=64)
    assert cache.build(paths, workers=1, progress=False) == {}
    for p in paths:
        im = ImageOps.exif_transpose(Image.open(p)).convert("L")
        w, h = round(im.width * 64 / max(im.size)), round(im.height * 64 / max(im.size))
        top, left = (64 - h) // 2, (64 - w) // 2
        arr = cache.load(p).astype(np.float64)
        content = arr[top : top + h, left : left + w]
        padding = np.ones(arr.shape, bool)
        padding[top : top + h, left : left + w] = False
        assert not arr[padding].any() and content.std() > 10
        reference = np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float64)
        assert np.corrcoef(content.ravel(), reference.ravel())[0, 1] > 0.99


def test_cache_reuses_entries(fixtures_dir: Path, tmp_path: Path, counted_decodes: list[str]) -> None:
    paths = copy_images(fixtures_dir, tmp_path / "img")
    cache = DecodeCache(tmp_path / "cache", size=64)
    cache.build(paths, workers=1, progress=False)
    assert sorted(counted_decodes) == sorted(paths)
    stamps = {p: cache.path_for(p).stat().st_mtime_ns for p in paths}
    counted_decodes.clear()
    assert DecodeCache(tmp_path / "cache", size=64).build(paths, workers=1, progress=False) == {}
    assert counted_decodes == []
    assert {p: cache.path_for(p).stat().st_mtime_ns for p in paths} == stamps


def test_cache_redecodes_a_changed_file(fixtures_dir: Path, tmp_path: Path, counted_decodes: list[str]) -> None:
    paths = copy_images(fixtures_dir, tmp_path / "img")
    cache = DecodeCache(tmp_path / "cache", size=64)
    cache.build(paths, workers=1, progress=False)
    before = cache.load(paths[0])
    counted_decodes.clear()

    shutil.copyfile(fixtures_dir / "images" / "IMG0002622.jpg", paths[0])  # new content, same name
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # touched only
    assert cache.build(paths, workers=1, progress=False) == {}
    assert sorted(counted_decodes) == sorted(paths[:2])
    after = cache.load(paths[0])
    image = read_for_model(paths[0], ModelSpec(image_size=64))
    expected = np.round(letterbox_image(image, 64)[0] * 255).astype(np.uint8)
    assert np.array_equal(after, expected) and not np.array_equal(after, before)


def test_cache_keeps_sizes_apart(fixtures_dir: Path, tmp_path: Path, counted_decodes: list[str]) -> None:
    paths = copy_images(fixtures_dir, tmp_path / "img", n=2)
    DecodeCache(tmp_path / "cache", size=64).build(paths, workers=1, progress=False)
    counted_decodes.clear()
    small = DecodeCache(tmp_path / "cache", size=32)
    small.build(paths, workers=1, progress=False)
    assert len(counted_decodes) == 2
    assert all(small.load(p).shape == (32, 32) for p in paths)
    assert DecodeCache(tmp_path / "cache", size=64).load(paths[0]).shape == (64, 64)


def test_cache_reports_unreadable_files(fixtures_dir: Path, tmp_path: Path) -> None:
    good = copy_images(fixtures_dir, tmp_path / "img", n=2)
    text = mv.text_file(tmp_path / "img" / "notes.jpg")
    empty = mv.truncate(fixtures_dir / "images" / mv.BASE_IMAGE, tmp_path / "img" / "empty.jpg", keep=0)
    missing = tmp_path / "img" / "deleted.jpg"
    paths = [*good, str(text), str(empty), str(missing)]
    cache = DecodeCache(tmp_path / "cache", size=32)
    errors = cache.build(paths, workers=1, progress=False)
    assert set(errors) == {str(text), str(empty), str(missing)}
    assert errors[str(missing)] == "deleted.jpg: no such file"
    assert errors[str(empty)] == "empty.jpg: empty file"
    assert errors[str(text)].startswith("notes.jpg: ")
    assert all(cache.load(p).shape == (32, 32) for p in good)
    assert not cache.path_for(str(text)).exists()


def test_cache_with_two_workers_matches_one(fixtures_dir: Path, tmp_path: Path) -> None:
    paths = copy_images(fixtures_dir, tmp_path / "img", n=4)
    bad = str(mv.text_file(tmp_path / "img" / "notes.png"))
    one, two = DecodeCache(tmp_path / "c1", size=48), DecodeCache(tmp_path / "c2", size=48)
    assert set(one.build([*paths, bad], workers=1, progress=False)) == {bad}
    assert set(two.build([*paths, bad], workers=2, progress=False)) == {bad}
    assert all(np.array_equal(one.load(p), two.load(p)) for p in paths)


# ---------------------------------------------------------------- the Dataset and DataLoader over the cache
class Keys:
    """A `Samples` whose item says which it is: (record index, seed) as a tensor; no images."""

    def __init__(self, n: int, repeat_first: int = 1) -> None:
        self.n, self.repeat_first, self.changes = n, repeat_first, 0

    def epoch_pool(self) -> list[int]:
        return [0] * self.repeat_first + list(range(1, self.n))

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.tensor([i, seed % 2**62]), {"label": torch.tensor(float(i % 2))}

    def start_epoch(self, epoch: int, model: torch.nn.Module) -> bool:
        self.changes += 1
        self.repeat_first = 1 + epoch  # the pool follows the epoch
        return True


def _batches(data: TrainingSet, batch_size: int, epoch: int, world: int, rank: int, mp: pytest.MonkeyPatch) -> list:
    mp.setattr(data_distributed, "world_size", lambda: world)  # a torchrun rank, without a process group
    mp.setattr(data_distributed, "rank", lambda: rank)
    loader = training_loader(data, batch_size, seed=3)
    loader.sampler.set_epoch(epoch)
    return [x.tolist() for x, _ in loader]


def test_ranks_take_one_process_global_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """DistributedSampler's shards, batched, are each global batch's samples r, r + world, ...: the two ranks'
    k-th batches interleave into one process's k-th batch, sample for sample (same record, same seed)."""
    data = TrainingSet(Keys(11), seed=3)
    for epoch in (0, 1):
        one = _batches(data, 4, epoch, 1, 0, monkeypatch)
        ranks = [_batches(data, 4, epoch, 2, r, monkeypatch) for r in (0, 1)]
        assert len(one) == len(ranks[0]) == len(ranks[1]) == 11 // 4  # whole global batches
        for k, batch in enumerate(one):
            assert batch[0::2] == ranks[0][k] and batch[1::2] == ranks[1][k]
        # every sample once at most, and the epoch's order is its own
        assert len({tuple(s) for b in one for s in b}) == 8
    assert _batches(data, 4, 0, 1, 0, monkeypatch) != _batches(data, 4, 1, 1, 0, monkeypatch)


def test_a_pool_smaller_than_a_batch_makes_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    data = TrainingSet(Keys(3), seed=0)
    assert [len(b) for b in _batches(data, 8, 0, 1, 0, monkeypatch)] == [3]
    # under torchrun, the largest multiple of the processes in it: one sample per rank here
    assert [len(b) for b in _batches(data, 8, 0, 2, 1, monkeypatch)] == [1]


def test_samples_are_seeded_by_epoch_and_place_and_a_refresh_renews_the_pool() -> None:
    keys = Keys(4, repeat_first=2)
    data = TrainingSet(keys, seed=5)
    assert data.pool == [0, 0, 1, 2, 3]
    # a repeated record gets another draw in each of its places, and another in each epoch
    assert data[(0, 0)][0].tolist() == [0, item_seed(5, 0, 0) % 2**62] != data[(0, 1)][0].tolist()
    assert data[(1, 0)][0][1] != data[(0, 0)][0][1]
    assert data.start_epoch(2, torch.nn.Identity()) and data.pool == [0, 0, 0, 1, 2, 3]


@pytest.mark.filterwarnings("ignore::bonefrac.io.read.ImageReadWarning")  # IMG0004228.jpg is truncated
def test_workers_make_the_batches_the_training_process_makes(fixtures_dir: Path, tmp_path: Path) -> None:
    """Whole augmented images with their box masks, made in the training process or in 2 worker processes:
    the same samples (each draws from its own seed, not from a worker's RNG)."""
    cache = DecodeCache(tmp_path / "cache", size=48)
    records = [r for r in load_dataset(fixtures_dir)][:6]
    assert cache.build([r.path for r in records], workers=1, progress=False) == {}
    data = TrainingSet(WholeImages(cache, records, box_masks=True), seed=0)
    made = {}
    for workers in (0, 2):
        loader = training_loader(data, 2, seed=0, workers=workers)
        loader.sampler.set_epoch(1)
        made[workers] = list(loader)
    assert len(made[0]) == 3
    for (x0, t0), (x2, t2) in zip(made[0], made[2], strict=True):
        # grid_sample and the contrast's mean on 48 x 48 pixels: float32 sums that a thread pool may split
        # otherwise in the training process (2 threads) than in a worker (1), a few eps of values <= 1
        torch.testing.assert_close(x2, x0, rtol=0, atol=1e-6)
        assert torch.equal(t0["label"], t2["label"]) and t0["masks"].shape == (2, 1, 48, 48)
        torch.testing.assert_close(t2["masks"], t0["masks"], rtol=0, atol=1e-6)
    assert any(t["masks"].sum() > 0 for _, t in made[0])  # boxed images among them
    # the augmentation is on: a sample is not its cached image; each image by its own parameters, whatever the
    # batch it is in (the augmentation runs batched in `collate`)
    order = list(loader.sampler)
    cached = torch.stack([CachedImages(cache, records)[data.pool[j]] for _, j in order[:2]])
    assert not torch.equal(made[0][0][0], cached)
    alone = data.collate([data[order[1]]])[0]
    torch.testing.assert_close(alone[0], made[0][0][0][1], rtol=0, atol=1e-6)
