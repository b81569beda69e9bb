"""Input at scale: the flat path index, the run's saved index, and WebDataset shard input."""
import json
import os
import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from imaging import write_images
from fitgap import index as I
from fitgap import shards as S
from fitgap.config import ConfigError
from fitgap.data import PlanBatchSampler, list_images
from fitgap.errors import InputError, MissingInput
from fitgap.plan import PlanSpec
from fitgap.ratios import parse_fraction
from test_train_contrastive import TINY, free_port, kill_after_checkpoint, losses, read_log, run_cmd

SPEC = PlanSpec(ratios=[parse_fraction(r) for r in ("3/2", "4/3", "5/4")], patch=8, images=6,
                images_per_ratio=2, phases_per_image=2, patches_per_phase=2, grid=2)


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_path_index_round_trips_any_name_and_pickles_flat():
    names = ["/a/b.jpg", "/ü/日本.png", "rel/x.webp", "", "/a/" + "z" * 300 + ".png",
             os.fsdecode(b"/bad/\xff\xfe.jpg")]  # a name that is not UTF-8 (surrogate-escaped)
    idx = I.PathIndex.from_paths(names)
    assert len(idx) == len(names) and list(idx) == names and idx[-1] == names[-1]
    with pytest.raises(IndexError):
        idx[len(names)]
    back = pickle.loads(pickle.dumps(idx))
    assert list(back) == names
    # what a worker receives is the two arrays, not one object per path
    big = I.PathIndex.from_paths([f"/data/train/n{i:08d}/img_{i:08d}.JPEG" for i in range(20000)])
    assert len(pickle.dumps(big)) < big.nbytes + 1000
    with pytest.raises(InputError, match="offsets"):
        I.PathIndex(np.zeros(3, np.uint8), np.array([0, 5], np.int64))


def test_folder_order_is_os_walks_order_and_lists_are_read(tmp_path):
    root = tmp_path / "d"
    for rel in ["b_c.jpg", "b/x.jpg", "b/a/y.png", "a.PNG", "c/z.jpeg", "c/notes.txt", "b.tif"]:
        touch(str(root / rel))
    walked = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        dirnames.sort()
        walked += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(I.IMAGE_EXTENSIONS)]
    listing = I.build_index(str(root))
    assert list(listing.index) == walked and listing.info.kind == "folder" and listing.info.count == 6
    assert list_images(str(root)) == walked
    rel = [os.path.relpath(p, str(root)) for p in walked]
    (tmp_path / "list.txt").write_text("# made by hand\n" + "\n".join(rel) + "\n\n")
    (tmp_path / "list.csv").write_text("label,path\n" + "\n".join(f"0,{r}" for r in rel) + "\n")
    (tmp_path / "plain.csv").write_text("\n".join(rel) + "\n")
    np.save(str(tmp_path / "list.npy"), np.array(rel))
    for name, kind in [("list.txt", "text"), ("list.csv", "csv"), ("plain.csv", "csv"), ("list.npy", "npy")]:
        got = I.build_index(str(tmp_path / name), root=str(root))
        assert list(got.index) == walked and got.info.kind == kind, name
    # without a root, relative paths join the list file's folder
    assert I.build_index(str(tmp_path / "list.txt")).index[0] == os.path.join(str(tmp_path), rel[0])
    np.save(str(tmp_path / "bad.npy"), np.zeros((2, 2)))
    with pytest.raises(InputError, match="1-D array of str"):
        I.build_index(str(tmp_path / "bad.npy"))
    with pytest.raises(MissingInput, match="neither a folder nor a file list"):
        I.build_index(str(tmp_path / "nope"))


def test_run_index_is_reused_and_a_change_is_reported(tmp_path):
    src, run = tmp_path / "src", str(tmp_path / "run")
    for rel in ["a/1.jpg", "a/2.jpg", "b/3.jpg"]:
        touch(str(src / rel))
    said = []
    first = I.index_for_run(str(src), run, resuming=False, say=said.append)
    assert len(first) == 3 and "listed" in said[-1] and os.path.isfile(os.path.join(run, "index.npz"))
    again = I.index_for_run(str(src), run, resuming=False, say=said.append)
    assert list(again) == list(first) and "source unchanged" in said[-1]
    os.utime(str(src / "b"), ns=(1, 1))  # pretend: an entry of b/ was added or removed
    touch(str(src / "a/sub/4.jpg"))  # a new sub-folder changes a/'s mtime too
    kept = I.index_for_run(str(src), run, resuming=True, say=said.append)
    assert list(kept) == list(first) and said[-1].startswith("warning:") and "keeps the saved list" in said[-1]
    other = I.index_for_run(str(tmp_path), run, resuming=True, say=said.append)
    assert list(other) == list(first) and "was started on" in said[-1]
    fresh = I.index_for_run(str(src), run, resuming=False, say=said.append)
    assert len(fresh) == 4 and "listing it again" in said[-2] and "listed" in said[-1]
    (tmp_path / "run" / "index.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="delete it"):
        I.index_for_run(str(src), run, resuming=True, say=said.append)


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 2), (1, 4), (12, 8)])
def test_rank_order_is_distributed_samplers(n, world):
    for rank in range(world):
        for epoch in (0, 3):
            s = PlanBatchSampler(n, SPEC, rank, world, seed=5, steps_per_epoch=2)
            s.set_epoch(epoch)
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=False)
            ref.set_epoch(epoch)
            assert s.rank_order().tolist() == list(ref)


# ---- shards ----

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """24 images (one corrupt) in shards of 3 (8 shards)."""
    base = tmp_path_factory.mktemp("shards")
    src = str(base / "src")
    write_images(src, 23)
    touch(os.path.join(src, "sub", "corrupt.png"), b"\x89PNG\r\n\x1a\n not really")
    manifest = S.write_shards(src, str(base / "out"), size=3, seed=1, progress=False)
    return src, str(base / "out"), manifest


def test_write_shards_keeps_the_bytes_and_counts(shard_dir):
    src, out, m = shard_dir
    assert m["images"] == 24 and [s["samples"] for s in m["shards"]] == [3] * 8
    assert m["pattern"] == os.path.join(out, "train-{000000..000007}.tar")
    seen = {}
    for shard in S.shard_list(m["pattern"]):
        with tarfile.open(shard.url) as tar:
            names = tar.getnames()
            for n in names:
                if n.endswith(".path.txt"):
                    key = n[:-len(".path.txt")]
                    rel = tar.extractfile(n).read().decode()
                    img = [x for x in names if x.startswith(key + ".") and not x.endswith(".txt")][0]
                    seen[rel] = tar.extractfile(img).read()
    assert len(seen) == 24
    for rel, data in seen.items():
        with open(os.path.join(src, rel), "rb") as f:
            assert f.read() == data, rel  # stored as it was, never re-encoded
    # the counts from the tar headers equal the manifest's; the manifest is also a source
    counted = [S.count_samples(s.url) for s in S.shard_list(os.path.join(out, "shards.json"))]
    assert counted == [3] * 8
    with pytest.raises(InputError, match="already holds shards"):
        S.write_shards(src, out, size=3, progress=False)


def test_manifest_counts_are_measured_when_shards_roll_over_by_size(tmp_path):
    # about 6 images per 16 kB shard although --size allows 1000: the writer rolls over by bytes
    write_images(str(tmp_path / "src"), 20)
    m = S.write_shards(str(tmp_path / "src"), str(tmp_path / "out"), size=1000, progress=False, max_bytes=16e3)
    counted = [S.count_samples(os.path.join(tmp_path, "out", s["url"])) for s in m["shards"]]
    assert len(m["shards"]) > 1 and [s["samples"] for s in m["shards"]] == counted and sum(counted) == 20
    assert m["pattern"].endswith(f"train-{{000000..{len(counted) - 1:06d}}}.tar")
    listed = S.shard_list(os.path.join(tmp_path, "out", "shards.json"))
    assert [x.samples for x in listed] == counted
    # a manifest that does not describe the files on disk is refused, naming the shard
    doc = json.loads((tmp_path / "out" / "shards.json").read_text())
    doc["shards"][0]["samples"] += 1
    doc["shards"][0]["bytes"] += 1
    (tmp_path / "out" / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="train-000000.tar holds"):
        S.read_manifest(str(tmp_path / "out" / "bad.json"))
    # an older manifest without sizes is checked against the tar headers
    for x in doc["shards"]:
        x.pop("bytes")
    doc["shards"][0]["samples"] -= 1
    (tmp_path / "out" / "old.json").write_text(json.dumps(doc))
    assert [x.samples for x in S.read_manifest(str(tmp_path / "out" / "old.json"))] == counted


def test_a_small_last_shard_does_not_shrink_the_epoch():
    # 64 shards of 1,000 and one of 5 on 8 ranks x 8 workers, 4 images a step
    shards = [S.Shard(f"s{i}.tar", 1000) for i in range(64)] + [S.Shard("s64.tar", 5)]
    layout = S.epoch_layout(shards, 64, 8, 4)
    assert layout.steps == 8 * 250 and layout.read / layout.total >= 0.99
    assert "(100.0%)" in layout.describe(64, 4) or "(99." in layout.describe(64, 4)
    for epoch in range(3):
        dealt = S.deal([x.samples for x in shards], 64, 7, epoch)
        flat = sorted(int(i) for d in dealt for i in d)
        assert flat == list(range(65))  # every shard dealt once
    # uneven whatever the deal: 10 shards of 1,000 on 8 readers is reported in numbers
    uneven = S.epoch_layout([S.Shard(f"u{i}.tar", 1000) for i in range(10)], 8, 1, 4)
    assert uneven.read == 8000 and "8000 of 10000 images (80.0%)" in uneven.describe(8, 4)
    assert "write smaller shards" in uneven.describe(8, 4)
    # sizes that only a by-count deal balances: 4 readers, 1 large + 6 small shards
    counts = [600, 200, 200, 200, 200, 200, 200]
    totals = sorted(sum(counts[i] for i in d) for d in S.deal(counts, 4, 0, 0))
    assert totals == [400, 400, 400, 600]


def test_shards_too_small_for_a_step_are_cycled_and_reported(shard_dir):
    # 8 shards of 3 on 2 ranks x 4 workers: every reader holds 3 images and a step needs 6
    _, _, m = shard_dir
    ds = S.ShardWindows(S.shard_list(m["pattern"]), SPEC, 1, 2, seed=0, workers=4)
    batches = collect(ds, 4)
    assert len(batches) == ds.steps == 4 and ds.layout.repeats == 2
    for b in batches:
        assert len(b["keys"]) == SPEC.images and len(set(b["keys"])) < SPEC.images  # read again, not refused
    # the 13 demo photos as 5 shards of 3 (the last holds 1) under 2 ranks x 1 worker, 16 images a step
    shards = [S.Shard(f"d{i}.tar", n) for i, n in enumerate([3, 3, 3, 3, 1])]
    layout = S.epoch_layout(shards, 2, 1, 16)
    assert layout.steps == 1 and layout.repeats > 1
    text = layout.describe(2, 16)
    assert "cycled" in text and "fewer than the 16" in text
    with pytest.raises(InputError, match="hold no image"):
        S.epoch_layout([S.Shard("e.tar", 0)], 2, 1, 16)


def test_shard_sources_are_recognised_and_missing_shards_named(shard_dir, tmp_path):
    _, out, m = shard_dir
    assert S.is_shard_source(m["pattern"]) and S.is_shard_source(os.path.join(out, "shards.json"))
    assert not S.is_shard_source(out) and not S.is_shard_source(os.path.join(out, "list.txt"))
    S.check_source(m["pattern"])
    with pytest.raises(ConfigError, match="2 of 10 shards do not exist"):
        S.check_source(os.path.join(out, "train-{000000..000009}.tar"))


def collect(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return list(loader)


def same_batch(a, b):
    return (a["keys"] == b["keys"] and torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["labels"], b["labels"])
            and torch.equal(a["corners"], b["corners"]) and a["unit"] == b["unit"] and a["consumed"] == b["consumed"])


def test_shards_are_split_across_ranks_and_workers(shard_dir):
    _, _, m = shard_dir
    shards = S.shard_list(m["pattern"])
    keys_by_unit, steps = {}, set()
    for rank in range(2):
        ds = S.ShardWindows(shards, SPEC, rank, 2, seed=0, workers=2)
        ds.set_epoch(1)
        batches = collect(ds, 2)
        steps.add(len(batches))
        assert [b["unit"] for b in batches] == [rank * 2 + i % 2 for i in range(len(batches))]
        for b in batches:
            keys_by_unit.setdefault(b["unit"], []).extend(b["keys"])
            assert b["pixels"].dtype == torch.uint8 and len(b["keys"]) == SPEC.images
    assert steps == {ds.steps} and ds.steps == 2  # 2 shards (6 images) a unit, 6 images a step, 2 units a rank
    files = {u: {k.split(":")[0] for k in keys} for u, keys in keys_by_unit.items()}
    for u in files:
        for v in files:
            assert u == v or not files[u] & files[v]  # no shard read by two readers
    dealt = S.deal([x.samples for x in shards], 4, 0, 1)
    for u, names in files.items():
        assert names <= {os.path.basename(shards[i].url) for i in dealt[u]}
    # more readers than shards: every reader still gets a shard (shards repeat), and says so
    many = S.ShardWindows(shards, SPEC, 0, 4, seed=0, workers=3)
    assert many.steps >= 3 and all(len(d) == 1 for d in S.deal([x.samples for x in shards], 12, 0, 0))


def test_shard_resume_gives_the_batches_of_an_uninterrupted_epoch(shard_dir):
    _, _, m = shard_dir
    shards = S.shard_list(m["pattern"])
    spec = PlanSpec(ratios=SPEC.ratios, patch=8, images=2, images_per_ratio=2, phases_per_image=1,
                    patches_per_phase=2, grid=2)
    ds = S.ShardWindows(shards, spec, 0, 1, seed=3, workers=2)
    ds.set_epoch(2)
    full = collect(ds, 2)
    assert len(full) == ds.steps == 12
    assert any(b["skipped"] for b in full)  # the corrupt file was skipped, which shifts positions
    for k in (1, 4, 7):
        consumed = {}
        for b in full[:k]:
            consumed[b["unit"]] = b["consumed"]
        again = S.ShardWindows(shards, spec, 0, 1, seed=3, workers=2)
        again.set_epoch(2, k, consumed)
        rest = collect(again, 2)
        assert len(rest) == len(full) - k and all(same_batch(a, b) for a, b in zip(rest, full[k:])), k


def run_shards(tmp_path, out, name, pattern, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY, f"data.train={pattern}",
            f"out_dir={out}", f"name={name}", "train.batch=32", "train.steps_per_epoch=null", "train.epochs=2",
            "train.ckpt_every=4", "probe.images=null", "data.workers=2", *extra]


@pytest.mark.slow
def test_torchrun_on_shards_kill_and_resume(tmp_path):
    src = str(tmp_path / "src")
    write_images(src, 48)
    m = S.write_shards(src, str(tmp_path / "shards"), size=3, progress=False)
    out = str(tmp_path / "runs")
    r = run_cmd(run_shards(tmp_path, out, "straight", m["pattern"]), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "shards: 16 (48 images), 4 readers (ranks x workers), 6 steps per epoch" in r.stdout
    straight = {x["step"]: x for x in read_log(os.path.join(out, "straight", "log.jsonl")) if "loss" in x}
    assert sorted(straight) == list(range(1, 13))
    ck = os.path.join(out, "killed", "checkpoint.pt")
    kill_after_checkpoint(run_shards(tmp_path, out, "killed", m["pattern"]), ck, 4)
    saved = torch.load(ck, weights_only=True)
    assert saved["step"] in (4, 8) and saved["stream"]["units"] == 4  # killed inside an epoch (6 steps)
    assert sorted(saved["stream"]["consumed"]) == [0, 1, 2, 3]  # every reader of both ranks has a position
    r = run_cmd(run_shards(tmp_path, out, "killed", m["pattern"]), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    resumed = {x["step"]: x for x in read_log(os.path.join(out, "killed", "log.jsonl")) if "loss" in x}
    assert sorted(resumed) == list(range(1, 13))
    for step in range(saved["step"] + 1, 13):
        assert abs(resumed[step]["loss"] - straight[step]["loss"]) <= 1e-6, step
        assert abs(resumed[step]["rank_losses"][1] - straight[step]["rank_losses"][1]) <= 1e-6, step
    # resumed with another number of workers: it goes on, saying the rest of the epoch is not the same
    os.makedirs(os.path.join(out, "rewired"))
    torch.save(saved, os.path.join(out, "rewired", "checkpoint.pt"))
    r = run_cmd(run_shards(tmp_path, out, "rewired", m["pattern"], ["data.workers=1"]), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "differ from this run's (2 = ranks x data.workers)" in r.stdout
    assert max(losses(read_log(os.path.join(out, "rewired", "log.jsonl")))) == 12


@pytest.mark.slow
def test_torchrun_folder_is_listed_once_by_rank_0(tmp_path):
    src = str(tmp_path / "src")
    write_images(src, 12)
    out = str(tmp_path / "runs")
    cmd = run_shards(tmp_path, out, "folder", src, ["train.steps_per_epoch=2", "train.epochs=1", "data.workers=1"])
    r = run_cmd(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("image index: 12 paths listed from") == 1
    saved = I.load_index(os.path.join(out, "folder", "index.npz"))
    assert list(saved.index) == list_images(src)


def test_shards_command_and_its_refusals(tmp_path, capsys):
    write_images(str(tmp_path / "src"), 5)
    m = S.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--size", "2"])
    out = capsys.readouterr().out
    assert m["images"] == 5 and [s["samples"] for s in m["shards"]] == [2, 2, 1]
    assert f"data.train={tmp_path / 'out'}/train-{{000000..000002}}.tar" in out
    for argv, msg in [(["--size", "0"], "--size must be >= 1"), ([], "already holds shards")]:
        with pytest.raises(SystemExit) as e:
            S.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        S.main(["--src", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")])
    assert "neither a folder nor a file list" in capsys.readouterr().err


def test_bad_data_sources_are_refused_before_work(tmp_path):
    from fitgap.pretrain import check_data_source

    write_images(str(tmp_path / "src"), 2)
    (tmp_path / "list.txt").write_text("img_000.png\n")
    d = {"train": str(tmp_path / "src"), "index": str(tmp_path / "list.txt")}
    check_data_source(d)  # an index, relative to the folder
    for bad, msg in [({"index": str(tmp_path / "nope.txt")}, "data.index"),
                     ({"train": str(tmp_path / "src" / "img_000.png")}, "is not one"),
                     ({"index": None, "train": ""}, "set a folder of real images"),
                     ({"index": None, "train": str(tmp_path / "s-{000..003}.tar")}, "4 of 4 shards do not exist"),
                     ({"index": None, "train": str(tmp_path / "shards.json")}, "does not exist"),
                     ({"index": None, "train": str(tmp_path / "none")}, "does not exist")]:
        with pytest.raises(ConfigError, match=msg):
            check_data_source(dict(d, **bad))


def test_an_image_given_where_a_folder_or_list_is_expected_is_one_line(tmp_path, capsys):
    from fitgap import probe

    write_images(str(tmp_path / "src"), 1)
    img = os.path.join(tmp_path, "src", "img_000.png")
    with pytest.raises(InputError, match="is an image: give the folder"):
        list_images(img)
    (tmp_path / "list.txt").write_bytes(b"\xff\xd8\xff\xe0 binary, not a list")
    with pytest.raises(InputError, match="not a list of image paths"):
        list_images(str(tmp_path / "list.txt"))
    with pytest.raises(SystemExit) as e:
        S.main(["--src", img, "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "is an image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        probe.main(["--ckpt", str(tmp_path / "none.pt"), "--images", img])
    assert e.value.code == 2
