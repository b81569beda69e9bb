"""Fine-tuning, evaluation, detection and the mini-benchmark on tiny trees."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fitgap import checkpoint as ckpt
from fitgap.evaldata import EvalDataset, Perturbation, tiles
from fitgap.finetune import fewshot_sample, split_items
from fitgap.models import ContrastiveModel, build_encoder

from imaging import smooth_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {"backbone": "test_resnet", "pretrained": False, "weights": None, "stem_stride": None,
         "stem_pool": True, "highpass": False, "proj_hidden": 32, "proj_dim": 16}


def make_tree(root, subsets=("a", "b"), n=6, size=48):
    """folder layout; fakes are 2x2 block-upsampled (an obvious generator trace)."""
    for s, name in enumerate(subsets):
        for i in range(n):
            real = smooth_noise(size, size, 100 * s + i)
            small = real[::2, ::2]
            fake = np.repeat(np.repeat(small, 2, 0), 2, 1)
            for label, img in (("0_real", real), ("1_fake", fake)):
                d = os.path.join(root, name, label)
                os.makedirs(d, exist_ok=True)
                Image.fromarray(img).save(os.path.join(d, f"{i}.png"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bench"))
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pre") / "checkpoint.pt")
    torch.manual_seed(0)
    model = ContrastiveModel(build_encoder("test_resnet"), 32, 16)
    cfg = {"model": MODEL, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "pretrain"}, path)
    return path


def run(args, timeout=300, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def finetune_args(tree, out, name, init, *extra):
    return ["finetune.py", "--config", "configs/demo_finetune.yaml", f"name={name}", f"out_dir={out}",
            f"init={init}", "data.bench=folder", f"data.root={tree}", "data.subsets=[a]", "data.workers=0",
            "patch=16", "eval.size=32", "train.epochs=2", "train.batch=4", "device=cpu",
            "model.backbone=test_resnet", "score=head", *extra]


def test_linear_probe_keeps_encoder_frozen(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "lin", pretrained, "mode=linear"))
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(tmp_path / "lin" / "last.pt", weights_only=True)
    assert after["kind"] == "detector" and after["config"]["model"]["backbone"] == "test_resnet"
    enc = {k: v for k, v in after["model"].items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(v, before[k]) for k, v in enc.items())
    assert os.path.exists(tmp_path / "lin" / "best.pt")


def test_full_finetune_changes_encoder_and_resumes(tree, pretrained, tmp_path):
    args = finetune_args(tree, str(tmp_path), "full", pretrained, "mode=full")
    run(args)
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    changed = [k for k, v in after["model"].items() if k.startswith("encoder.") and v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert changed and after["epoch"] == 1
    # last.pt records which epoch best.pt holds, and the run says it
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert after["best_epoch"] == best["epoch"] and best["best_ap"] == after["best_ap"]
    r = run(args + ["train.epochs=3"])
    assert "resumed from" in r.stdout
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["best_epoch"] == best["epoch"]  # carried across the resume
    assert f"best.pt: epoch {best['epoch']} (val AP {100 * best['best_ap']:.1f}" in r.stdout, r.stdout[-1500:]
    # the same name in another mode is refused before anything is written
    cfg_file = tmp_path / "full" / "config.yaml"
    before = cfg_file.read_text()
    r = run(args + ["mode=linear", "train.epochs=4"], check=False)
    assert r.returncode == 2 and "mode: differ from" in r.stderr, r.stderr[-2000:]
    assert cfg_file.read_text() == before
    # so is another augmentation: a resumed run draws its crops as the interrupted one did
    r = run(args + ["augment.sharpen=[-0.5, 0.5]", "train.epochs=4"], check=False)  # the demo's is [-1, 1]
    assert r.returncode == 2 and "augment.sharpen: differ from" in r.stderr, r.stderr[-2000:]
    assert cfg_file.read_text() == before


def test_evaluate_writes_tables_and_counts_unreadable(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "ev", pretrained))
    bench = tmp_path / "bench"
    make_tree(str(bench), subsets=("x", "y"), n=4)
    (bench / "x" / "1_fake" / "broken.png").write_bytes(b"\x89PNG not really")
    os.makedirs(bench / "onlyfake" / "1_fake")
    Image.fromarray(smooth_noise(40, 40, 3)).save(bench / "onlyfake" / "1_fake" / "0.png")
    out = tmp_path / "eval"
    r = run(["evaluate.py", "--ckpt", str(tmp_path / "ev" / "best.pt"), "--bench", "folder", "--root",
             str(bench), "--out", str(out), "--device", "cpu", "--workers", "0"])
    assert "| **mean** |" in r.stdout
    res = json.loads((out / "results.json").read_text())
    rows = {x["subset"]: x for x in res["rows"]}
    assert rows["x"]["skipped"] == 1 and rows["x"]["n"] == 8 and "unreadable" in rows["x"]["notes"]
    assert rows["onlyfake"]["ap"] is None and "AP undefined" in rows["onlyfake"]["notes"]
    assert 0 <= rows["y"]["ap"] <= 1 and res["mean"]["ap_subsets"] == 2
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("subset,status,ap,auc,acc") and "mean" in csv_text
    md = (out / "results.md").read_text()
    assert "| x |" in md and "### folder: ev/best.pt, perturbation none" in md
    # the threshold-free metrics and the shortcut check stand beside every subset
    for key in ("auc", "eer", "tpr_at_fpr1", "tpr_at_fpr5", "ece", "bal_acc", "metadata_ap", "shortcut"):
        assert key in rows["y"], key
    assert rows["y"]["shortcut"] is False and "meta AP" in md  # both classes are PNG of one size
    scores = (out / "scores.csv").read_text().splitlines()
    assert scores[0] == "subset,path,label,p_fake,error" and len(scores) == 1 + 8 + 9 + 1
    assert (out / "reliability.png").stat().st_size > 0
    # a threshold fitted on that run is reported beside 0.5
    out2 = tmp_path / "eval2"
    r = run(["evaluate.py", "--ckpt", str(tmp_path / "ev" / "best.pt"), "--bench", "folder", "--root",
             str(bench), "--out", str(out2), "--device", "cpu", "--workers", "0", "--threshold-from", str(out),
             "--resize", "0.5", "--resize-kernel", "bicubic", "--antialias", "off"])
    res2 = json.loads((out2 / "results.json").read_text())
    assert isinstance(res2["threshold"], float) and "acc_t" in res2["rows"][0] and "acc@t" in r.stdout
    assert res2["perturbation"] == "resize0.5-bicubic-noaa"
    # writing into the folder the threshold is read from is refused before anything is scored
    before = (out / "scores.csv").read_text()
    r = run(["evaluate.py", "--ckpt", str(tmp_path / "ev" / "best.pt"), "--bench", "folder", "--root",
             str(bench), "--out", str(out), "--device", "cpu", "--workers", "0", "--threshold-from", str(out)],
            check=False)
    assert r.returncode == 2 and "overwrite" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (out / "scores.csv").read_text() == before
    # detect: one row per file, unreadable reported
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "ev" / "best.pt"), str(bench / "x" / "1_fake"),
             "--device", "cpu", "--json"], check=False)
    assert r.returncode == 1 and "1 of 5 file(s) not scored" in r.stderr  # one unreadable file
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 5 and sum(x["error"] is not None for x in lines) == 1
    assert all(0 <= x["p_fake"] <= 1 for x in lines if x["error"] is None)


@pytest.mark.slow
def test_evaluate_under_torchrun_counts_each_image_once(tree, pretrained, tmp_path):
    # fine-tuning on 2 ranks: every rank keeps the same best AP (rank 0 alone used to update it)
    run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
         *finetune_args(tree, str(tmp_path), "tr2", pretrained)])
    with open(tmp_path / "tr2" / "log.jsonl") as f:
        final = [json.loads(x) for x in f if '"final"' in x][-1]
    assert len(final["rank_best_ap"]) == 2 and final["rank_best_ap"][0] == final["rank_best_ap"][1] >= 0
    run(finetune_args(tree, str(tmp_path), "tr", pretrained))
    out1, out2 = tmp_path / "e1", tmp_path / "e2"
    common = ["--ckpt", str(tmp_path / "tr" / "best.pt"), "--bench", "folder", "--root", tree,
              "--device", "cpu", "--workers", "0"]
    run(["evaluate.py", *common, "--out", str(out1)])
    run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "evaluate.py", *common,
         "--out", str(out2)])
    a = json.loads((out1 / "results.json").read_text())
    b = json.loads((out2 / "results.json").read_text())
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["n"] == rb["n"] == 12
        assert ra["ap"] == pytest.approx(rb["ap"]) and ra["acc"] == pytest.approx(rb["acc"])


def same_image_as_real_and_fake(folder):
    """One image saved as a real and as a fake: (the image, [(path, 0), (path, 1)])."""
    img = smooth_noise(64, 64, 7)
    for label in ("0_real", "1_fake"):
        os.makedirs(folder / label)
        Image.fromarray(img).save(folder / label / "same.png")
    return img, [(str(folder / "0_real" / "same.png"), 0), (str(folder / "1_fake" / "same.png"), 1)]


def test_perturbations_are_label_blind(tmp_path):
    img, items = same_image_as_real_and_fake(tmp_path)
    plain = EvalDataset(items, 32, "center")
    for p in (Perturbation(jpeg=50), Perturbation(blur=1.5), Perturbation(resize=0.75),
              Perturbation(jpeg=70, blur=0.5, resize=1.25), Perturbation(webp=75), Perturbation(reencode="jpeg:90"),
              Perturbation(resize=0.75, resize_kernel="bicubic", antialias=False)):
        ds = EvalDataset(items, 32, "center", p)
        assert torch.equal(ds[0][0], ds[1][0])
        assert not torch.equal(ds[0][0], plain[0][0])
    # PNG re-encoding is lossless: the pixels a detector sees do not change
    assert torch.equal(EvalDataset(items, 32, "center", Perturbation(reencode="png"))[0][0], plain[0][0])
    with pytest.raises(ValueError, match="--jpeg"):
        Perturbation(jpeg=0).check()


def test_the_jpeg96_protocol_reencodes_the_fakes_alone_and_tiers_cap_then_compress(tmp_path):
    from fitgap.evaldata import PROTOCOLS, TIERS, encode_decode

    img, items = same_image_as_real_and_fake(tmp_path)
    plain = EvalDataset(items, 64, "center")
    ds = EvalDataset(items, 64, "center", fake_perturb=PROTOCOLS["jpeg96"][1])
    assert torch.equal(ds[0][0], plain[0][0])  # the real as it is
    want = torch.from_numpy(encode_decode(img, "JPEG", 96).copy()).permute(2, 0, 1)[None]
    assert torch.equal(ds[1][0], want) and not torch.equal(ds[1][0], plain[1][0])
    big = smooth_noise(500, 1000, 1)
    web = TIERS["web"][1](big)
    assert web.shape == (384, 768, 3) and TIERS["hard"][1](big).shape == (256, 512, 3)
    small = smooth_noise(300, 200, 2)
    assert TIERS["web"][1](small).shape == small.shape  # never enlarged: only the JPEG applies
    assert np.array_equal(TIERS["web"][1](small), encode_decode(small, "JPEG", 60))
    with pytest.raises(ValueError, match="max_side"):
        Perturbation(max_side=0).check()


def test_evaluate_names_its_protocol_and_tier_and_refuses_mixing_a_tier(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "pr", pretrained))
    ck = str(tmp_path / "pr" / "best.pt")
    base = ["evaluate.py", "--ckpt", ck, "--bench", "folder", "--root", tree, "--device", "cpu", "--workers", "0"]
    r = run(base + ["--protocol", "jpeg96"])
    out = tmp_path / "pr" / "eval_folder_default_center_protocol-jpeg96"
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "jpeg96" and "protocol jpeg96" in r.stdout
    assert "protocol: jpeg96 (fakes re-encoded as JPEG q96" in (out / "results.md").read_text()
    plain = run(base)
    assert "protocol: as distributed" in plain.stdout
    run(base + ["--protocol", "size-constrained"])
    res = json.loads((tmp_path / "pr" / "eval_folder_default_center_protocol-size-constrained" / "results.json")
                     .read_text())
    assert res["protocol"] == "size-constrained" and all("size-constrained: kept" in r["notes"] for r in res["rows"])
    r = run(base + ["--tier", "web"])
    res = json.loads((tmp_path / "pr" / "eval_folder_default_center_maxside768+jpeg60" / "results.json").read_text())
    assert res["tier"].startswith("web") and res["perturbation"] == "maxside768+jpeg60" and "tier web" in r.stdout
    r = run(base + ["--tier", "hard", "--jpeg", "75"], check=False)
    assert r.returncode == 2 and "--tier hard: a tier is its own perturbation" in r.stderr and "--jpeg" in r.stderr


def test_finetune_encoder_lr_scale_and_linear_epochs(tree, pretrained, tmp_path):
    """optim.encoder_lr_scale puts the encoder in its own parameter group at lr x scale; with
    train.linear_epochs the encoder stays exactly the pre-trained one (batch-norm statistics included)
    for those epochs, then learns; both refused when out of range."""
    from fitgap.finetune import DEFAULTS, check, param_groups
    from fitgap import config as C
    from fitgap.models import Detector, build_encoder

    det = Detector(build_encoder("test_resnet"))
    groups = param_groups(det, 0.1)
    assert [g["name"] for g in groups] == ["head", "encoder"] and groups[1]["lr_scale"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(det.parameters()))
    one = param_groups(det, 1.0, separate=False)  # the default: one group, as older runs have (they resume)
    assert len(one) == 1 and len(one[0]["params"]) == len(list(det.parameters()))
    opt = torch.optim.Adam(groups, lr=1.0)
    from fitgap.optim import set_lr

    set_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == [2e-3, pytest.approx(2e-4)]
    run(finetune_args(tree, str(tmp_path), "lp", pretrained, "train.linear_epochs=1", "train.epochs=2",
                      "optim.encoder_lr_scale=0.5"))
    before = torch.load(pretrained, weights_only=True)["model"]
    log = [json.loads(x) for x in (tmp_path / "lp" / "log.jsonl").read_text().splitlines()]
    assert any("epoch_loss" in x for x in log)
    best = torch.load(tmp_path / "lp" / "last.pt", weights_only=True)
    assert best["epoch"] == 1
    changed = [k for k, v in best["model"].items() if k.startswith("encoder.") and v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert changed  # learned in the second epoch
    run(finetune_args(tree, str(tmp_path), "lp1", pretrained, "train.linear_epochs=1", "train.epochs=2",
                      "train.max_steps=1"))  # stops inside the linear epoch: the encoder is untouched
    one = torch.load(tmp_path / "lp1" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, before[k]) for k, v in one.items() if k.startswith("encoder."))
    cfg = C.load_config("configs/demo_finetune.yaml", ["init=null", "train.linear_epochs=4", "train.epochs=4"],
                        DEFAULTS)
    with pytest.raises(C.ConfigError, match="train.linear_epochs"):
        check(cfg, 1)
    cfg = C.load_config("configs/demo_finetune.yaml", ["init=null", "optim.encoder_lr_scale=0.0"], DEFAULTS)
    with pytest.raises(C.ConfigError, match="encoder_lr_scale"):
        check(cfg, 1)


def test_an_epoch_that_only_ties_the_best_validation_ap_is_named_as_not_kept():
    from fitgap.finetune import selection_note

    assert selection_note(1.0, 0.9, 0) == ""  # better: it becomes best.pt, nothing to add
    assert selection_note(0.5, -1.0, None) == ""  # the first epoch
    tie = selection_note(1.0, 1.0, 1)
    assert "ties epoch 1" in tie and "stays at epoch 1" in tie
    worse = selection_note(0.8, 0.95, 2)
    assert "stays at epoch 2" in worse and "95.0" in worse and "ties" not in worse


def test_without_a_validation_ap_best_pt_is_the_latest_epoch_and_says_so(pretrained, tmp_path):
    from fitgap.finetune import NO_VAL_AP, replaces_best, selection_note

    assert replaces_best(None, NO_VAL_AP) and not replaces_best(None, 0.7)  # an AP seen once is kept
    assert replaces_best(0.3, NO_VAL_AP) and not replaces_best(1.0, 1.0)
    assert "best.pt stays at epoch 0" in selection_note(None, 0.7, 0)
    # a subset of fakes alone: every epoch's validation AP is undefined (not -100, not 0)
    for i in range(6):
        d = tmp_path / "bench" / "f" / "1_fake"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_noise(48, 48, 500 + i)).save(d / f"{i}.png")
    args = finetune_args(str(tmp_path / "bench"), str(tmp_path), "one", pretrained, "data.subsets=[f]")
    r = run(args)
    assert "val AP -;" in r.stdout and "-100" not in r.stdout, r.stdout[-1500:]
    assert "best.pt is this latest epoch" in r.stdout
    assert "best.pt: epoch 1 (the latest: no epoch had a validation AP" in r.stdout
    best = torch.load(tmp_path / "one" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert best["epoch"] == last["best_epoch"] == 1
    assert all(torch.equal(v, last["model"][k]) for k, v in best["model"].items())


def test_tiles_cover_the_image():
    a = np.arange(100 * 70 * 3, dtype=np.uint8).reshape(100, 70, 3)
    t = tiles(a, 32)
    assert len(t) == 4 * 3 and all(x.shape == (32, 32, 3) for x in t)
    assert np.array_equal(t[-1], a[-32:, -32:])
    # a side equal to the crop still gets the tiles along the other side
    assert len(tiles(np.zeros((128, 512, 3), np.uint8), 128)) == 4
    assert len(tiles(np.zeros((129, 512, 3), np.uint8), 128)) == 8
    assert len(tiles(np.zeros((100, 512, 3), np.uint8), 128)) == 1


class Brightness(torch.nn.Module):
    """Logit = mean value; NaN for all-white crops; records its batch sizes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        out = x.mean(dim=(1, 2, 3))
        return torch.where(out > 1.99, torch.full_like(out, float("nan")), out)


def test_tiles_go_to_the_model_in_fixed_chunks():
    from fitgap.detector import score_logits

    torch.manual_seed(0)
    crops = [torch.rand(37, 3, 8, 8), torch.rand(5, 3, 8, 8), torch.rand(2, 3, 6, 6)]
    m = Brightness()
    chunked = score_logits(m, crops, "cpu", max_crops=4)
    assert max(m.batches) <= 4
    assert chunked == pytest.approx([c.mean(dim=(1, 2, 3)).mean().item() for c in crops], abs=1e-6)
    # uint8 crops are normalised chunk by chunk, with exactly the arithmetic of to_tensor
    from fitgap.evaldata import stack_uint8, to_tensor

    imgs = [np.random.default_rng(k).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8) for k in range(2)]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    raw = score_logits(Brightness(), [stack_uint8(list(a)) for a in imgs], "cpu", max_crops=4, mean=mean, std=std)
    flt = score_logits(Brightness(), [torch.stack([to_tensor(t, mean, std) for t in a]) for a in imgs], "cpu",
                       max_crops=4)
    assert raw == flt


def test_non_finite_scores_are_named_and_the_rest_is_reported(tmp_path):
    from fitgap.benchmarks import load_benchmark
    from fitgap.evaluate import evaluate_subsets

    make_tree(str(tmp_path), subsets=("a",), n=4)
    Image.fromarray(np.full((48, 48, 3), 255, np.uint8)).save(tmp_path / "a" / "1_fake" / "white.png")
    subs = load_benchmark("folder", str(tmp_path))
    res = evaluate_subsets(Brightness(), subs, 32, "center", [0.0] * 3, [0.5] * 3, Perturbation(), "cpu",
                           batch=4, workers=0)
    row = res["rows"][0]
    assert row["failed"] == 1 and row["failed_files"][0].endswith("white.png")
    assert row["n"] == 8 and row["ap"] is not None and "non-finite score" in row["notes"]


def test_fewshot_sampling_is_seeded_and_per_class():
    items = [(f"r{i}", 0) for i in range(20)] + [(f"f{i}", 1) for i in range(5)]
    a = fewshot_sample(items, 3, seed=1)
    assert a == fewshot_sample(items, 3, seed=1) and a != fewshot_sample(items, 3, seed=2)
    assert sum(1 for _, y in a if y == 0) == 3 and sum(1 for _, y in a if y == 1) == 3
    assert len(fewshot_sample(items, 10, seed=0)) == 15
    tr, va = split_items(items, 0.2, seed=0)
    assert len(va) == 5 and not set(tr) & set(va)


def test_minibench_builds_once(tmp_path, monkeypatch):
    from fitgap import minibench

    cache = str(tmp_path / "mb")
    denoisers, train_denoiser = [], minibench.train_denoiser
    monkeypatch.setattr(minibench, "train_denoiser", lambda tiles, steps, seed, t_max=minibench.DIFFUSION_STEPS:
                        denoisers.append((steps, t_max)) or train_denoiser(tiles, steps, seed, t_max))
    minibench.build_minibench(cache, steps=3)
    assert denoisers == [(9, minibench.PIXDIFF_T_MAX)]  # pixdiff's U-Net: SDEdit's range, 3x the steps
    for split in ("train", "test"):
        for fam in minibench.FAMILIES:
            real = os.listdir(os.path.join(cache, split, fam, "0_real"))
            fake = os.listdir(os.path.join(cache, split, fam, "1_fake"))
            assert len(real) == len(fake) > 20 and all(f.endswith(".png") for f in real + fake)
    im = Image.open(os.path.join(cache, "test", "tconv", "1_fake", "0000.png"))
    assert im.size == (minibench.TILE, minibench.TILE) and im.format == "PNG"
    assert set(minibench.FAMILIES) >= {"tconv", "nearest", "pshuffle", "pixdiff", "ldm"}
    info = json.loads(open(os.path.join(cache, "BUILT.json")).read())
    for fam in minibench.FAMILIES:  # how far each family's fakes are from the reals, and a trivial baseline
        stats = info["per_family"][fam]
        assert 5 < stats["psnr_test"] < 99 and 0 <= stats["spectrum_ap_test"] <= 1
        assert math.isfinite(stats["residual_energy_test"]) and stats["residual_energy_test"] >= 0
    assert info["version"] == minibench.VERSION and info["pixdiff_denoiser"] == {"steps": 9, "t_max": 35}
    monkeypatch.setattr(minibench, "build_minibench", lambda *a, **k: pytest.fail("rebuilt"))
    assert minibench.ensure_minibench(cache) == cache


def test_diffusion_families_generate_every_pixel_with_their_network():
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (M.TILE, M.TILE, 3), dtype=np.uint8) for _ in range(3)]
    unet = M.train_denoiser(tiles, 2, seed=0)
    a, b = M.sdedit(unet, tiles, seed=5), M.sdedit(unet, tiles, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # seeded
    assert all(x.shape == t.shape and x.dtype == np.uint8 and (x != t).mean() > 0.9 for x, t in zip(a, tiles))
    ab = M.alpha_bars()
    assert ab[0] == 1.0 and bool((ab[1:] < ab[:-1]).all()) and ab[-1] < 0.01
    ldm = M.LatentAutoEncoder()
    with torch.no_grad():
        z = ldm.encoder(torch.zeros(1, 3, 128, 128))
        assert z.shape == (1, 4, 16, 16) and ldm.decoder(z).shape == (1, 3, 128, 128)  # 4 channels at 1/8
    # the spectrum baseline tells white noise from its 4x block-upsampled copy, and not from itself
    smooth = [np.repeat(np.repeat(t[::4, ::4], 4, 0), 4, 1) for t in tiles]
    assert M.spectrum_baseline_ap({"real": tiles, "fake": smooth}, {"real": tiles, "fake": smooth}) == 1.0
    assert M.psnr(tiles, tiles) == 99.0


def test_demo_frozen_transfer_uses_the_detectors_evaluation_crop(tmp_path):
    from fitgap.demo import eval_crop

    assert eval_crop(os.path.join(ROOT, "configs", "demo_finetune.yaml")) == 64  # eval.size
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("patch: 40\neval: {size: null}\n")
    assert eval_crop(str(cfg)) == 40


def test_demo_similarity_map_uses_the_pretraining_patch(tmp_path):
    """The demo draws the patch-similarity map at the size the encoder was pre-trained and probed at."""
    from fitgap.demo import pretrain_patch

    assert pretrain_patch(os.path.join(ROOT, "configs", "demo_pretrain.yaml")) == 32
    cfg = tmp_path / "pre.yaml"
    cfg.write_text("plan: {patch: 64}\n")
    assert pretrain_patch(str(cfg)) == 64


def test_demo_scratch_ablation_trains_the_pretraining_architecture():
    from fitgap import config as C
    from fitgap.demo import scratch_overrides
    from fitgap.finetune import DEFAULTS as FINETUNE
    from fitgap.pretrain import DEFAULTS as PRETRAIN

    pre_yaml = os.path.join(ROOT, "configs", "demo_pretrain.yaml")
    ft_yaml = os.path.join(ROOT, "configs", "demo_finetune.yaml")
    pre = C.load_config(pre_yaml, [], PRETRAIN)
    scratch = C.load_config(ft_yaml, ["init=null", *scratch_overrides(pre_yaml)], FINETUNE)
    assert scratch["model"] == pre["model"] and scratch["normalize"] == pre["normalize"]
    # without the overrides the ablation would train another architecture
    assert C.load_config(ft_yaml, ["init=null"], FINETUNE)["model"] != pre["model"]


def test_the_demo_names_the_score_its_detectors_answer_with(tmp_path):
    from fitgap.demo import score_text

    ft_yaml = os.path.join(ROOT, "configs", "demo_finetune.yaml")
    assert "score: head" in score_text(ft_yaml)  # the shipped demo
    other = tmp_path / "distance.yaml"
    other.write_text(open(ft_yaml).read().replace("score: head", "score: distance"))
    assert "distance from tconv's training reals" in score_text(str(other))


def test_the_same_finetuning_twice_gives_the_same_logits_bit_for_bit(tree, pretrained, tmp_path):
    """Seeds, deterministic kernels, a fixed thread count and seeded loader workers (with random JPEG
    and blur augmentation in a worker process): one machine, one answer."""
    from fitgap.detector import load_detector

    for name in ("first", "second"):
        run(finetune_args(tree, str(tmp_path), name, pretrained, "data.workers=1", "augment.jpeg_prob=0.5",
                          "augment.blur_prob=0.5", "train.threads=1"))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = []
    for name in ("first", "second"):
        model, _ = load_detector(str(tmp_path / name / "last.pt"), "cpu")
        with torch.no_grad():
            logits.append(model(x))
    assert torch.equal(logits[0], logits[1])
    a = torch.load(tmp_path / "first" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "second" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_detect_names_non_finite_scores_and_exits_1(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "nan", pretrained, "train.epochs=1"))
    saved = torch.load(tmp_path / "nan" / "best.pt", weights_only=True)
    saved["model"]["classifier.bias"].fill_(float("nan"))
    torch.save(saved, tmp_path / "nan.pt")
    folder = os.path.join(tree, "a", "0_real")
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "nan.pt"), folder, "--device", "cpu", "--json"],
            check=False)
    assert r.returncode == 1, r.stderr[-2000:]

    def refuse(c):
        raise ValueError(c)

    rows = [json.loads(x, parse_constant=refuse) for x in r.stdout.splitlines()]  # strict JSON: no NaN
    assert len(rows) == 6 and all(x["p_fake"] is None and x["label"] is None and x["error"] == "non-finite score"
                                  for x in rows)
    assert "6 of 6 file(s) not scored" in r.stderr
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "nan" / "best.pt"), folder, "--device", "cpu"])
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 7
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "nan" / "best.pt"), folder, "--size", "0"], check=False)
    assert r.returncode == 2 and "--size" in r.stderr and "Traceback" not in r.stderr


def test_images_smaller_than_the_phase_encoder_block_are_skipped_and_named(tmp_path):
    from fitgap.benchmarks import load_benchmark
    from fitgap.evaluate import evaluate_subsets
    from fitgap.models import Detector, min_input_side

    make_tree(str(tmp_path), subsets=("a",), n=3)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "a" / "0_real" / "thumb.png")
    torch.manual_seed(0)
    model = Detector(build_encoder("fitgap_phase_stats12")).eval()
    assert min_input_side(model) == 12 and min_input_side(Detector(build_encoder("test_resnet"))) == 1
    res = evaluate_subsets(model, load_benchmark("folder", str(tmp_path)), 24, "center", [0.5] * 3, [0.25] * 3,
                           Perturbation(), "cpu", batch=4, workers=0)
    row = res["rows"][0]
    assert row["n"] == 6 and row["skipped"] == 1 and row["skipped_files"][0].endswith("thumb.png")
    err = [e for _, p, _, _, e in res["_scores"] if p.endswith("thumb.png")][0]
    assert "too small for the encoder: 1x1 < 12 px" in err
    with pytest.raises(ValueError, match="smaller than the encoder's smallest input"):
        EvalDataset([], 8, "center", Perturbation(), min_side=12)


def test_checkpoints_never_reread_the_weights_file_their_run_started_from(tmp_path):
    from fitgap.detector import load_detector, load_encoder
    from fitgap.models import Detector
    from fitgap.probe import initial_encoder

    torch.manual_seed(1)
    start = build_encoder("test_resnet")
    weights = tmp_path / "imagenet.pth"
    torch.save(start.backbone.state_dict(), weights)
    model_cfg = dict(MODEL, weights=str(weights))
    det = Detector(build_encoder("test_resnet", weights=str(weights)))
    cfg = {"model": model_cfg, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}, "seed": 0}
    ckpt.atomic_save({"model": det.state_dict(), "config": cfg, "kind": "detector"}, str(tmp_path / "det.pt"))
    assert torch.equal(next(initial_encoder(cfg, "cpu").parameters()), next(start.parameters()))
    os.remove(weights)  # the file the run started from is gone
    loaded, _ = load_detector(str(tmp_path / "det.pt"), "cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), det.eval()(x))
    enc, _ = load_encoder(str(tmp_path / "det.pt"), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), det.encoder.state_dict().values()))
    # the probe's "before pre-training" baseline says what it is instead of failing
    fresh = initial_encoder(cfg, "cpu")
    assert "no longer exists" in fresh.initial_note


def test_no_held_out_photo_shares_a_scene_with_a_training_photo(tmp_path):
    from fitgap.photos import HELDOUT, TRAIN, export_photos

    assert not set(TRAIN) & set(HELDOUT)
    stems = {}
    for name in TRAIN + HELDOUT:  # one scene shot twice (a stereo pair: x_left / x_right) is one side
        stem = os.path.splitext(name)[0].rsplit("_", 1)
        if len(stem) == 2 and stem[1] in ("left", "right"):
            stems.setdefault(stem[0], set()).add(name in TRAIN)
    assert stems and all(len(sides) == 1 for sides in stems.values()), stems
    # an export made by the old split is brought in line: no photo left on the wrong side
    os.makedirs(tmp_path / "heldout")
    (tmp_path / "heldout" / "motorcycle_right.png").write_bytes(b"old split")
    folders = export_photos(str(tmp_path))
    assert sorted(os.listdir(folders["heldout"])) == sorted(HELDOUT)
    assert sorted(os.listdir(folders["train"])) == sorted(TRAIN)


@pytest.mark.slow
def test_ranks_score_rank_0s_listing_even_when_their_own_differs(tree, pretrained, tmp_path):
    """Rank 1 sees the folder in another order (a file system that lists differently): every score
    still lands on its own image, because rank 0 lists and broadcasts."""
    run(finetune_args(tree, str(tmp_path), "lst", pretrained, "train.epochs=1"))
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, torch.distributed as dist\n"
        "import evaluate as E\n"
        "import fitgap.benchmarks as B\n"
        "real = B.load_benchmark\n"
        "def shuffled(*a, **k):\n"
        "    subs = real(*a, **k)\n"
        "    if dist.is_initialized() and dist.get_rank() == 1:\n"
        "        for s in subs:\n"
        "            s.items = s.items[::-1]\n"
        "    return subs\n"
        "B.load_benchmark = shuffled\n"
        "import fitgap.evaluate\n"
        "fitgap.evaluate.load_benchmark = shuffled\n"
        "E.main(E.get_args_parser().parse_args(sys.argv[1:]))\n")
    common = ["--ckpt", str(tmp_path / "lst" / "best.pt"), "--bench", "folder", "--root", tree, "--device", "cpu",
              "--workers", "0", "--no-audit"]
    run(["evaluate.py", *common, "--out", str(tmp_path / "one")])
    env_path = ROOT + os.pathsep + os.path.join(ROOT, "tests")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
                        str(driver), *common, "--out", str(tmp_path / "two")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=env_path))
    assert r.returncode == 0, r.stderr[-3000:]

    def scores(folder):
        rows = (folder / "scores.csv").read_text().splitlines()[1:]
        return {tuple(x.split(",")[:3]): x.split(",")[3] for x in rows}

    one, two = scores(tmp_path / "one"), scores(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 24
    assert all(abs(float(one[k]) - float(two[k])) < 1e-5 for k in one)


def test_calibrate_then_evaluate_with_its_verdicts(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "cal", pretrained, "train.epochs=1"))
    val, test = tmp_path / "val", tmp_path / "test"
    make_tree(str(val), subsets=("v",), n=8)
    make_tree(str(test), subsets=("t",), n=6)
    ckpt_path = str(tmp_path / "cal" / "best.pt")
    r = run(["-m", "fitgap.calibrate", "--ckpt", ckpt_path, "--bench", "folder", "--root", str(val),
             "--device", "cpu", "--workers", "0", "--fpr", "0.125", "--fnr", "0.125"])
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert doc["temperature"] > 0 and doc["counts"] == {"real": 8, "fake": 8} and "temperature" in r.stdout
    assert doc["reached"]["fpr"] <= 0.125 and doc["reached"]["fnr"] <= 0.125  # reached on its own set
    assert len(doc["fitted_on"]["file_ids"]) == 16 and doc["fitted_on"]["bench"] == "folder"
    out = tmp_path / "ev"
    r = run(["evaluate.py", "--ckpt", ckpt_path, "--bench", "folder", "--root", str(test), "--out", str(out),
             "--device", "cpu", "--workers", "0", "--calibration", str(tmp_path / "cal" / "calibration.json")])
    res = json.loads((out / "results.json").read_text())
    c = res["rows"][0]["calibrated"]
    for key in ("nll_before", "nll_after", "ece_before", "ece_after", "cllr_before", "cllr_after", "decided"):
        assert c[key] is not None, key
    assert abs(sum(c["real"].values()) - 1) < 1e-9 and abs(sum(c["fake"].values()) - 1) < 1e-9
    assert res["calibration"]["temperature"] == doc["temperature"] and "file_ids" not in res["calibration"]["fitted_on"]
    assert "Calibrated verdicts" in (out / "results.md").read_text() and "Calibrated verdicts" in r.stdout
    # the calibration set is not judged: evaluating on it is refused before any scoring
    r = run(["evaluate.py", "--ckpt", ckpt_path, "--bench", "folder", "--root", str(val), "--out", str(tmp_path / "x"),
             "--device", "cpu", "--workers", "0", "--calibration", str(tmp_path / "cal" / "calibration.json")],
            check=False)
    assert r.returncode == 2 and "16 image(s) of this evaluation are in the set" in r.stderr, r.stderr[-1500:]
    (tmp_path / "bad.json").write_text('{"temperature": -1, "thresholds": {"fake": 0.9, "real": 0.1}}')
    r = run(["evaluate.py", "--ckpt", ckpt_path, "--bench", "folder", "--root", str(test), "--device", "cpu",
             "--calibration", str(tmp_path / "bad.json")], check=False)
    assert r.returncode == 2 and "out of range" in r.stderr
    r = run(["-m", "fitgap.calibrate", "--ckpt", ckpt_path, "--bench", "mini", "--split", "test"], check=False)
    assert r.returncode == 2 and "calibrate on train" in r.stderr


def test_detect_gives_calibrated_verdicts_reasons_and_file_facts(tree, pretrained, tmp_path):
    run(finetune_args(tree, str(tmp_path), "dv", pretrained, "train.epochs=1"))
    ckpt_path = str(tmp_path / "dv" / "best.pt")
    folder = os.path.join(tree, "b")
    r = run(["-m", "fitgap.detect", "--ckpt", ckpt_path, folder, "--device", "cpu", "--json"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 12 and all(x["calibrated"] is False and x["reasons"][0].startswith("uncalibrated") for x in rows)
    assert all(x["file"]["format"] == "PNG" and x["file"]["width"] == 48 and set(x["consistency"]) ==
               {"bilinear x0.9", "bilinear x1.1", "jpeg q95"} for x in rows)
    (tmp_path / "dv" / "calibration.json").write_text(json.dumps(
        {"temperature": 1.5, "thresholds": {"fake": 0.6, "real": 0.4}, "targets": {"fpr": 0.01, "fnr": 0.05}}))
    r = run(["-m", "fitgap.detect", "--ckpt", ckpt_path, folder, "--device", "cpu", "--json", "--no-consistency"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    for x in rows:  # the calibration beside the checkpoint is read; the verdict follows its thresholds
        p = x["p_calibrated"]
        assert x["calibrated"] and x["consistency"] is None and 0 <= p <= 1
        assert x["verdict"] == ("fake" if p >= 0.6 else "real" if p <= 0.4 else "unsure")
    r = run(["-m", "fitgap.detect", "--ckpt", ckpt_path, folder, "--device", "cpu"])
    head = r.stdout.splitlines()[0].split(",")
    assert head[:4] == ["path", "p_fake", "p_calibrated", "verdict"] and len(r.stdout.splitlines()) == 13
    # a closed pipe ends it quietly
    p = subprocess.run(f"{sys.executable} -m fitgap.detect --ckpt {ckpt_path} {folder} --device cpu | head -n 2",
                       shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert len(p.stdout.splitlines()) == 2 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_detect_tile_heatmaps(tree, pretrained, tmp_path):
    from fitgap.calibration import sigmoid
    from fitgap.evaldata import tile_boxes

    run(finetune_args(tree, str(tmp_path), "hm", pretrained, "train.epochs=1"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(smooth_noise(80, 100, 7)).save(imgs / "wide.png")
    Image.fromarray(smooth_noise(40, 40, 8)).save(imgs / "small.png")
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "hm" / "best.pt"), str(imgs), "--crop", "tiles",
             "--heatmap", str(tmp_path / "maps"), "--json", "--device", "cpu", "--no-consistency"])
    rows = {os.path.basename(x["path"]): x for x in map(json.loads, r.stdout.splitlines())}
    wide = rows["wide.png"]
    assert len(wide["tiles"]) == len(tile_boxes(80, 100, 32)) == 12
    # the image's score is the mean logit of exactly these tiles
    logits = [np.log(p / (1 - p)) for p in wide["tiles"]]
    assert abs(float(sigmoid(np.mean(logits))) - wide["p_fake"]) < 1e-5
    with Image.open(wide["heatmap"]) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert os.path.dirname(rows["small.png"]["heatmap"]) == str(tmp_path / "maps")
    r = run(["-m", "fitgap.detect", "--ckpt", str(tmp_path / "hm" / "best.pt"), str(imgs), "--heatmap",
             str(tmp_path / "maps")], check=False)
    assert r.returncode == 2 and "--crop tiles" in r.stderr


def test_reference_scores_check_an_install(tree, pretrained, tmp_path):
    from fitgap.detect import check_reference, write_reference

    run(finetune_args(tree, str(tmp_path), "ref", pretrained, "train.epochs=1"))
    files = [os.path.join(tree, "a", d, f"{i}.png") for d in ("0_real", "1_fake") for i in range(2)]
    path = write_reference(str(tmp_path / "ref" / "best.pt"), files, str(tmp_path / "ref" / "reference"))
    doc = json.loads(open(path).read())
    assert len(doc["logits"]) == 4 and doc["checkpoint"] == os.path.join("..", "best.pt")
    r = run(["-m", "fitgap.detect", "--check", str(tmp_path / "ref" / "reference")])
    assert r.stdout.startswith("ok: 4 reference images")
    assert float(r.stdout.split("largest logit difference ")[1].split()[0]) < 1e-6  # another process, same machine
    # a copy of the run folder elsewhere checks too (paths are relative); a wrong value is named, exit 1
    import io
    import shutil

    shutil.copytree(tmp_path / "ref", tmp_path / "copy")
    doc["logits"][next(iter(doc["logits"]))] += 0.5
    (tmp_path / "copy" / "reference" / "reference_scores.json").write_text(json.dumps(doc))
    buf = io.StringIO()
    assert check_reference(str(tmp_path / "copy" / "reference"), buf) == 1 and buf.getvalue().startswith("MISMATCH")
    r = run(["-m", "fitgap.detect", "--check", str(tmp_path / "nowhere")], check=False)
    assert r.returncode == 2 and "reference_scores.json" in r.stderr


def test_demo_compares_the_mean_of_repeated_finetunings():
    """The demo's verdict is made on the mean over repeated fine-tunings, not on one draw: the summary
    keeps every run, the table gives mean and range, and the sentence names the side that is ahead."""
    from fitgap.demo import format_repeats, repeat_summary

    def res(**ap):
        return {"rows": [{"subset": k, "ap": v / 100} for k, v in ap.items()]}

    runs = {"pretrained": [res(tconv=99, nearest=80, pixdiff=60, ldm=70), res(tconv=98, nearest=70, pixdiff=50, ldm=60)],
            "scratch": [res(tconv=99, nearest=90, pixdiff=40, ldm=50), res(tconv=99, nearest=60, pixdiff=40, ldm=50)]}
    s = repeat_summary(runs)
    assert s["pretrained"]["n"] == 2
    assert s["pretrained"]["unseen"]["runs"] == pytest.approx([70.0, 60.0])  # tconv (trained on) left out
    assert s["pretrained"]["diffusion"]["mean"] == pytest.approx(60.0)
    assert s["scratch"]["families"]["nearest"] == pytest.approx({"mean": 75.0, "min": 60.0, "max": 90.0})
    text = "\n".join(format_repeats(s))
    assert "| nearest | 75.0 (70.0-80.0) | 75.0 (60.0-90.0) |" in text
    assert "| unseen mean | 65.0 (60.0-70.0) | 55.0 (50.0-60.0) |" in text
    assert "unseen families the pretrained detector is ahead of scratch by 10.0 AP" in text
    assert "diffusion-like families the pretrained detector is ahead of scratch by 15.0 AP" in text
    assert "moves by up to 10.0 AP" in text
    runs["scratch"] = [res(tconv=99, nearest=95, pixdiff=90, ldm=80)]
    assert "behind scratch by 23.3 AP" in "\n".join(format_repeats(repeat_summary(runs)))
    # a family missing from one run (no AP) is left out of the means rather than counted as 0
    runs["pretrained"].append({"rows": [{"subset": "tconv", "ap": 0.9}, {"subset": "nearest", "ap": None}]})
    assert "nearest" not in repeat_summary(runs)["pretrained"]["families"]
