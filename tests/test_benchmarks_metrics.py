"""Benchmark layouts and labels; metrics against hand-computed values."""
import os

import numpy as np
import pytest
from PIL import Image

from fitgap.benchmarks import GENIMAGE, SELFSYNTH, load_benchmark
from fitgap.metrics import mean_row, subset_metrics


def touch_images(folder, n):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(os.path.join(folder, f"{i}.png"))


def test_selfsynth_layout_and_missing(tmp_path):
    for gen in SELFSYNTH[:3]:
        touch_images(tmp_path / gen / "0_real", 2)
        touch_images(tmp_path / gen / "1_fake", 3)
    os.makedirs(tmp_path / "SNGAN" / "0_real")
    subsets = load_benchmark("selfsynth", str(tmp_path))
    by = {s.name: s for s in subsets}
    assert [s.name for s in subsets] == SELFSYNTH
    assert by["AttGAN"].counts == {"real": 2, "fake": 3} and by["AttGAN"].status == "ok"
    assert by["SNGAN"].status == "empty" and by["STGAN"].status == "missing"
    assert all(label == (1 if "1_fake" in p else 0) for p, label in by["BEGAN"].items)


def test_forensynths_pools_class_folders(tmp_path):
    for c in ("car", "cat"):
        touch_images(tmp_path / "progan" / c / "0_real", 2)
        touch_images(tmp_path / "progan" / c / "1_fake", 1)
    touch_images(tmp_path / "stylegan" / "0_real", 1)
    touch_images(tmp_path / "stylegan" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("forensynths", str(tmp_path))}
    assert by["progan"].counts == {"real": 4, "fake": 2}
    assert by["stylegan"].counts == {"real": 1, "fake": 1}
    assert by["biggan"].status == "missing"


def test_genimage_ai_nature_and_renamed(tmp_path):
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "val" / "ai", 3)
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "val" / "nature", 2)
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "train" / "ai", 5)
    touch_images(tmp_path / "glide" / "val" / "1_fake", 1)
    touch_images(tmp_path / "glide" / "val" / "0_real", 4)
    touch_images(tmp_path / "VQDM" / "0_real", 1)
    touch_images(tmp_path / "VQDM" / "1_fake", 2)
    by = {s.name: s for s in load_benchmark("genimage", str(tmp_path))}
    assert by["ADM"].counts == {"real": 2, "fake": 3}
    assert all(label == 1 for p, label in by["ADM"].items if "/ai/" in p)
    assert all(label == 0 for p, label in by["ADM"].items if "/nature/" in p)
    assert by["glide"].counts == {"real": 4, "fake": 1}
    assert by["VQDM"].counts == {"real": 1, "fake": 2}
    assert by["Midjourney"].status == "missing"
    train = {s.name: s for s in load_benchmark("genimage", str(tmp_path), split="train")}
    assert train["ADM"].counts == {"real": 0, "fake": 5}
    assert [s.name for s in load_benchmark("genimage", str(tmp_path))][:len(GENIMAGE)] == GENIMAGE


def test_folder_layout_any_depth(tmp_path):
    touch_images(tmp_path / "a" / "x" / "0_real", 1)
    touch_images(tmp_path / "a" / "x" / "1_fake", 2)
    touch_images(tmp_path / "b" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("folder", str(tmp_path))}
    assert by["a/x"].counts == {"real": 1, "fake": 2} and by["b"].counts == {"real": 0, "fake": 1}
    with pytest.raises(FileNotFoundError):
        load_benchmark("folder", str(tmp_path / "a" / "x" / "0_real"))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("imagenet", str(tmp_path))


def test_subset_filter_reports_missing(tmp_path):
    touch_images(tmp_path / "AttGAN" / "0_real", 1)
    s = load_benchmark("selfsynth", str(tmp_path), subsets=["AttGAN", "NoSuchGAN"])
    assert [x.status for x in s] == ["ok", "missing"]


def test_metrics_hand_computed():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.9, 0.7, 0.3, 0.5]
    m = subset_metrics(labels, scores)
    # predictions p > 0.5: [F, T, F, T, T, F, F]
    assert m["acc"] == pytest.approx(4 / 7) and m["real_acc"] == pytest.approx(2 / 3)
    assert m["fake_acc"] == pytest.approx(2 / 4)
    # AP: ranking 0.9(1) 0.7(1) 0.6(0) 0.5(1) 0.4(0) 0.3(1) 0.1(0): precisions at positives 1, 1, 3/4, 4/6
    assert m["ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["n_real"] == 3 and m["n_fake"] == 4


def test_one_class_subset_reports_undefined_ap():
    m = subset_metrics([1, 1, 1], [0.9, 0.2, 0.8])
    assert m["ap"] is None and "AP undefined" in m["notes"] and m["real_acc"] is None
    assert m["fake_acc"] == pytest.approx(2 / 3)


def test_mean_row_is_unweighted_and_skips_undefined():
    rows = [{"acc": 1.0, "real_acc": 1.0, "fake_acc": 1.0, "ap": 1.0},
            {"acc": 0.5, "real_acc": None, "fake_acc": 0.5, "ap": None},
            {"acc": 0.0, "real_acc": 0.0, "fake_acc": 0.0, "ap": 0.5}]
    m = mean_row(rows)
    assert m["acc"] == pytest.approx(0.5) and m["ap"] == pytest.approx(0.75) and m["ap_subsets"] == 2


# --- threshold-free metrics, calibration, fitted threshold ----------------------------------------

def test_new_metrics_against_sklearn_and_hand_computed():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from fitgap.metrics import ece, eer, tpr_at_fpr

    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    m = subset_metrics(labels, scores)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["bal_acc"] == pytest.approx(balanced_accuracy_score(labels, [s > 0.5 for s in scores]))
    # at t = 0.6 one real is above and one fake below: FPR = FNR = 1/4
    assert m["eer"] == pytest.approx(0.25) and eer(labels, scores) == pytest.approx(0.25)
    # with no false positive allowed, the three fakes above every real are found
    assert m["tpr_at_fpr1"] == pytest.approx(0.75) and tpr_at_fpr(labels, scores, 0.25) == pytest.approx(1.0)
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0)
    # ECE by hand: bins of 0.05, 0.95, 0.55, 0.45 hold one image each: |0-.05|, |1-.95|, |1-.55|, |0-.45|
    assert ece([0, 1, 1, 0], [0.05, 0.95, 0.55, 0.45]) == pytest.approx((0.05 + 0.05 + 0.45 + 0.45) / 4)
    assert ece([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


def test_fitted_threshold_is_reported_beside_half():
    from fitgap.metrics import fit_threshold

    labels, scores = [0, 0, 1, 1], [0.6, 0.7, 0.8, 0.9]
    t = fit_threshold(labels, scores)
    assert 0.7 < t < 0.8
    m = subset_metrics(labels, scores, fitted_threshold=t)
    assert m["acc"] == pytest.approx(0.5) and m["real_acc"] == 0.0  # every real is called fake at 0.5
    assert m["acc_t"] == 1.0 and m["bal_acc_t"] == 1.0 and m["threshold"] == t
    with pytest.raises(ValueError, match="real and fake"):
        fit_threshold([1, 1], [0.2, 0.3])


def test_threshold_from_evaluation_folder_and_json(tmp_path):
    from fitgap.evaluate import load_threshold

    (tmp_path / "scores.csv").write_text("subset,path,label,p_fake,error\na,x,0,0.6,\na,y,0,0.7,\n"
                                         "a,z,1,0.8,\na,w,1,0.9,\na,v,1,,unreadable\n")
    t, src = load_threshold(str(tmp_path))
    assert 0.7 < t < 0.8 and "scores.csv" in src
    (tmp_path / "results.json").write_text('{"rows": [], "threshold": null}')
    assert load_threshold(str(tmp_path / "results.json"))[0] == t
    (tmp_path / "t.json").write_text('{"threshold": 0.3}')
    assert load_threshold(str(tmp_path / "t.json")) == (0.3, str(tmp_path / "t.json"))
    with pytest.raises(FileNotFoundError, match="--threshold-from"):
        load_threshold(str(tmp_path / "nope"))
    # malformed or non-object JSON: one line naming the file, no JSONDecodeError / AttributeError
    from fitgap.errors import InputError

    for name, text in (("bad.json", "{not json"), ("list.json", "[0.3]"), ("nokey.json", '{"t": 1}'),
                       ("inf.json", '{"threshold": Infinity}')):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=name):
            load_threshold(str(tmp_path / name))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "scores.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match="scores.csv"):
        load_threshold(str(tmp_path / "junk"))


def _eval_args(**kw):
    import argparse

    base = dict(ckpt="/r/ft/best.pt", bench="genimage", split=None, subsets=None, crop="center", size=None,
                threshold_from=None, out=None)
    return argparse.Namespace(**{**base, **kw})


def test_default_eval_folder_encodes_everything_that_changes_scores():
    from fitgap.evaluate import default_out_dir
    from fitgap.evaldata import Perturbation

    none = Perturbation()
    base = default_out_dir(_eval_args(), none)
    assert os.path.dirname(base) == "/r/ft" and os.path.basename(base).startswith("eval_genimage")
    variants = [default_out_dir(_eval_args(split="train"), none),
                default_out_dir(_eval_args(subsets=["ADM"]), none),
                default_out_dir(_eval_args(subsets=["ADM", "glide"]), none),
                default_out_dir(_eval_args(crop="tiles"), none),
                default_out_dir(_eval_args(size=96), none),
                default_out_dir(_eval_args(), Perturbation(jpeg=75)),
                default_out_dir(_eval_args(), Perturbation(resize=0.5, resize_kernel="bicubic")),
                default_out_dir(_eval_args(threshold_from="/r/ft/eval_a"), none),
                default_out_dir(_eval_args(threshold_from="/r/ft/eval_b"), none)]
    assert len({base, *variants}) == 1 + len(variants)
    assert default_out_dir(_eval_args(subsets=["x/../../y"]), none).startswith("/r/ft/eval_")  # no path from names


def test_an_evaluation_never_overwrites_the_scores_it_reads_its_threshold_from(tmp_path):
    from fitgap.errors import InputError
    from fitgap.evaluate import check_out_dir

    val = tmp_path / "eval_val"
    val.mkdir()
    (val / "scores.csv").write_text("subset,path,label,p_fake,error\n")
    for src in (str(val), str(val / "scores.csv"), str(val / "results.json")):
        with pytest.raises(InputError, match="overwrite"):
            check_out_dir(str(val), src)
    check_out_dir(str(tmp_path / "eval_test"), str(val))  # elsewhere: fine
    check_out_dir(str(val), None)


# --- the layouts of 2026's benchmarks -------------------------------------------------------------

def test_wildrf_layout(tmp_path):
    for site in ("reddit", "twitter"):
        touch_images(tmp_path / "test" / site / "0_real", 2)
        touch_images(tmp_path / "test" / site / "1_fake", 3)
    touch_images(tmp_path / "train" / "0_real", 4)
    touch_images(tmp_path / "train" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("wildrf", str(tmp_path))}
    assert list(by) == ["reddit", "twitter", "facebook"]
    assert by["reddit"].counts == {"real": 2, "fake": 3} and by["facebook"].status == "missing"
    train = load_benchmark("wildrf", str(tmp_path), split="train")
    assert [(s.name, s.counts) for s in train] == [("train", {"real": 4, "fake": 1})]


def test_ufd_diffusion_layout_borrows_paired_reals(tmp_path):
    touch_images(tmp_path / "guided" / "1_fake", 3)
    touch_images(tmp_path / "imagenet" / "0_real", 2)
    touch_images(tmp_path / "ldm_200" / "1_fake", 1)
    touch_images(tmp_path / "laion" / "0_real", 5)
    touch_images(tmp_path / "dalle" / "0_real", 1)
    touch_images(tmp_path / "dalle" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("ufd", str(tmp_path))}
    assert "imagenet" not in by and "laion" not in by
    assert by["guided"].counts == {"real": 2, "fake": 3}
    assert all("imagenet" in p for p, y in by["guided"].items if y == 0)
    assert by["ldm_200"].counts == {"real": 5, "fake": 1} and by["dalle"].counts == {"real": 1, "fake": 1}
    assert by["glide_100_27"].status == "missing"
    assert by["guided"].note == "" and by["dalle"].note == ""
    # borrowed reals that are missing: named beside the subset, not a silent one-class subset
    import shutil

    shutil.rmtree(tmp_path / "laion")
    by = {s.name: s for s in load_benchmark("ufd", str(tmp_path))}
    assert by["ldm_200"].counts == {"real": 0, "fake": 1}
    assert "laion/0_real" in by["ldm_200"].note and "missing" in by["ldm_200"].note


def test_synthbuster_needs_and_shares_the_real_root(tmp_path):
    touch_images(tmp_path / "synth" / "dalle3", 3)
    touch_images(tmp_path / "synth" / "firefly", 2)
    touch_images(tmp_path / "raise", 4)
    with pytest.raises(FileNotFoundError, match="--real-root"):
        load_benchmark("synthbuster", str(tmp_path / "synth"))
    by = {s.name: s for s in load_benchmark("synthbuster", str(tmp_path / "synth"), real_root=str(tmp_path / "raise"))}
    assert by["dalle3"].counts == {"real": 4, "fake": 3} and by["firefly"].counts == {"real": 4, "fake": 2}
    assert by["midjourney-v5"].status == "missing"
    # the real root nested below the root, at any depth, is neither a subset nor a source of fakes
    for nested in ("RAISE", os.path.join("RAISE", "PNG"), os.path.join("dalle3", "reals")):
        real = tmp_path / "synth" / nested
        touch_images(real, 4)
        subs = load_benchmark("synthbuster", str(tmp_path / "synth"), real_root=str(real))
        names = [s.name for s in subs]
        assert "RAISE" not in names, names
        by = {s.name: s for s in subs}
        assert by["dalle3"].counts == {"real": 4, "fake": 3} and by["firefly"].counts == {"real": 4, "fake": 2}
        for s in subs:
            assert not any(y == 1 and str(real) in p for p, y in s.items)
        import shutil
        shutil.rmtree(tmp_path / "synth" / nested.split(os.sep)[0]) if nested.startswith("RAISE") else shutil.rmtree(real)


def test_an_image_labelled_both_real_and_fake_is_refused(tmp_path):
    touch_images(tmp_path / "imgs", 2)
    (tmp_path / "twice.csv").write_text("path,label,subset\nimgs/0.png,0,a\nimgs/1.png,1,a\nimgs/0.png,fake,b\n")
    with pytest.raises(ValueError, match="both real and fake"):
        load_benchmark("csv", str(tmp_path / "twice.csv"))
    # a folder tree whose real folder is linked into a fake folder
    touch_images(tmp_path / "tree" / "g" / "0_real", 2)
    os.makedirs(tmp_path / "tree" / "g" / "1_fake")
    os.symlink(tmp_path / "tree" / "g" / "0_real", tmp_path / "tree" / "g" / "1_fake" / "same")
    with pytest.raises(ValueError, match="both real and fake"):
        load_benchmark("folder", str(tmp_path / "tree"))


def test_chameleon_layout(tmp_path):
    touch_images(tmp_path / "test" / "0_real", 3)
    touch_images(tmp_path / "test" / "1_fake", 2)
    (s,) = load_benchmark("chameleon", str(tmp_path))
    assert s.name == "chameleon" and s.counts == {"real": 3, "fake": 2}


def test_csv_list_relative_paths_subsets_and_bad_rows(tmp_path):
    touch_images(tmp_path / "imgs", 3)
    (tmp_path / "list.csv").write_text("path,label,subset\nimgs/0.png,0,a\nimgs/1.png,fake,a\nimgs/2.png,1,b\n")
    by = {s.name: s for s in load_benchmark("csv", str(tmp_path / "list.csv"))}
    assert by["a"].counts == {"real": 1, "fake": 1} and by["b"].counts == {"real": 0, "fake": 1}
    assert by["a"].items[0][0] == os.path.join(str(tmp_path), "imgs/0.png")
    (tmp_path / "nosub.csv").write_text("imgs/0.png,real\nimgs/1.png,1\n")
    (s,) = load_benchmark("csv", str(tmp_path / "nosub.csv"))
    assert s.name == "all" and s.counts == {"real": 1, "fake": 1}
    (tmp_path / "bad.csv").write_text("imgs/0.png,0\nimgs/1.png,maybe\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        load_benchmark("csv", str(tmp_path / "bad.csv"))


def test_csv_with_named_columns_reads_b_free_and_imaginet_layouts(tmp_path):
    """--columns names the header columns to read: B-Free's viral list (filename, REAL/FAKE labels, a
    third column that is not a subset) and ImagiNet's annotations (paths under one root, a model column
    as the subset, its own label words)."""
    from fitgap.errors import InputError as IE

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("a.png", "b.png", "c.png", "d.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imgs / n)
    bfree = tmp_path / "viral.csv"
    bfree.write_text("filename,label,source_id\nimgs/a.png,REAL,123\nimgs/b.png,FAKE,456\nimgs/c.png,fake,789\n")
    subs = load_benchmark("csv", str(bfree), columns="path=filename,label=label")
    assert [(s.name, s.counts) for s in subs] == [("all", {"real": 1, "fake": 2})]  # source_id is not a subset
    assert subs[0].items[0] == (str(tmp_path / "imgs" / "a.png"), 0)
    by_src = load_benchmark("csv", str(bfree), columns="path=filename,label=label,subset=source_id")
    assert [(s.name, s.counts) for s in by_src] == [("456", {"real": 1, "fake": 1}), ("789", {"real": 1, "fake": 1})]
    ann = tmp_path / "annotations" / "test.csv"
    ann.parent.mkdir()
    ann.write_text("path,origin,content_type,model,specific_model\n"
                   "a.png,authentic,photo,,\nb.png,synthetic,photo,sd,sdxl\nc.png,synthetic,art,midjourney,v6\n"
                   "d.png,authentic,art,,\n")
    subs = load_benchmark("csv", str(ann), columns="path=path,label=origin,subset=model", image_root=str(imgs),
                          real_values=["authentic"], fake_values=["synthetic"])
    by = {s.name: s for s in subs}
    assert sorted(by) == ["midjourney", "sd"]  # the reals (no model) are every model's reals
    assert by["sd"].counts == {"real": 2, "fake": 1} and (str(imgs / "b.png"), 1) in by["sd"].items
    assert (str(imgs / "d.png"), 0) in by["midjourney"].items and "rows without a 'model' value" in by["sd"].note
    # reals under a value of their own (OpenFake's) are pooled the same way
    from fitgap.benchmarks import group_labelled_rows

    subs = group_labelled_rows([("r1", 0, "real"), ("f1", 1, "sd"), ("r2", 0, "real"), ("f2", 1, "flux")], "model")
    assert [(x.name, x.counts) for x in subs] == [("sd", {"real": 2, "fake": 1}), ("flux", {"real": 2, "fake": 1})]
    assert "model 'real'" in subs[0].note
    mixed = group_labelled_rows([("r1", 0, "a"), ("f1", 1, "a"), ("r2", 0, "b")], "model")
    assert [x.name for x in mixed] == ["a", "b"]  # no fakes-only subset: nothing is pooled
    with pytest.raises(IE, match=r"test.csv:3: label 'synthetic' in column 'origin' is neither"):
        load_benchmark("csv", str(ann), columns="path=path,label=origin", image_root=str(imgs),
                       real_values=["authentic"])
    with pytest.raises(IE, match="no column 'origin2'"):
        load_benchmark("csv", str(ann), columns="path=path,label=origin2")
    with pytest.raises(IE, match="label must be named"):
        load_benchmark("csv", str(ann), columns="path=path")
    with pytest.raises(IE, match="FIELD=COLUMN"):
        load_benchmark("csv", str(ann), columns="file=path,label=origin")
    with pytest.raises(IE, match="use --bench csv"):
        load_benchmark("folder", str(imgs), columns="path=path,label=origin")
    with pytest.raises(IE, match="given as both"):
        load_benchmark("csv", str(ann), columns="path=path,label=origin", real_values=["x"], fake_values=["X"])


def test_cospy_bench_pairs_each_caption_sets_fakes_with_its_own_reals(tmp_path):
    def img(p):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)

    root = tmp_path / "cospy"
    for cap in ("mscoco", "flickr"):
        for model in ("stabilityai@sdxl", "black-forest-labs@flux"):
            for i in range(2):
                img(str(root / "synthetic" / cap / model / f"{i}.png"))
    for i in range(3):
        img(str(root / "real" / "mscoco" / f"{i}.jpg"))
    subs = {s.name: s for s in load_benchmark("cospy", str(root))}
    assert sorted(subs) == ["flickr/black-forest-labs@flux", "flickr/stabilityai@sdxl",
                            "mscoco/black-forest-labs@flux", "mscoco/stabilityai@sdxl"]
    assert subs["mscoco/stabilityai@sdxl"].counts == {"real": 3, "fake": 2}
    assert all("mscoco" in p for p, y in subs["mscoco/stabilityai@sdxl"].items if y == 0)
    assert subs["flickr/stabilityai@sdxl"].counts == {"real": 0, "fake": 2}
    assert "no reals for caption set 'flickr'" in subs["flickr/stabilityai@sdxl"].note
    other = tmp_path / "reals"
    for i in range(2):
        img(str(other / "flickr" / f"{i}.jpg"))
    subs = {s.name: s for s in load_benchmark("cospy", str(root), real_root=str(other))}
    assert subs["flickr/stabilityai@sdxl"].counts == {"real": 2, "fake": 2}


def test_aigibench_reads_test_and_its_perturbed_copies_by_split(tmp_path):
    from fitgap.benchmarks import AIGIBENCH
    from fitgap.errors import InputError, MissingInput

    for split, n_fake in (("test", 2), ("jpeg", 1)):
        for gen in ("ProGAN", "SD3"):
            touch_images(tmp_path / split / gen / "0_real", 2)
            touch_images(tmp_path / split / gen / "1_fake", n_fake)
    touch_images(tmp_path / "test" / "Midjourney-V6" / "1_fake", 1)  # misspelt: Midjourney expected
    subs = load_benchmark("aigibench", str(tmp_path))
    by = {s.name: s for s in subs}
    assert [s.name for s in subs][:len(AIGIBENCH)] == AIGIBENCH and len(AIGIBENCH) == 25
    assert by["ProGAN"].counts == {"real": 2, "fake": 2} and by["SD3"].status == "ok"
    assert by["Midjourney"].status == "missing" and by["Midjourney-V6"].counts == {"real": 0, "fake": 1}
    assert sum(s.status == "missing" for s in subs) == 23
    jp = {s.name: s for s in load_benchmark("aigibench", str(tmp_path), split="jpeg")}
    assert jp["SD3"].counts == {"real": 2, "fake": 1}
    assert all(os.sep + "jpeg" + os.sep in p for p, _ in jp["SD3"].items)
    # test/ itself as the root
    assert {s.name: s for s in load_benchmark("aigibench", str(tmp_path / "test"))}["SD3"].counts["fake"] == 2
    with pytest.raises(MissingInput, match="no noise/ folder"):
        load_benchmark("aigibench", str(tmp_path), split="noise")
    with pytest.raises(InputError, match="aigibench has test, jpeg, noise, sample"):
        load_benchmark("aigibench", str(tmp_path), split="val")


def test_holmes_reads_its_testset_folder(tmp_path):
    from fitgap.benchmarks import HOLMES

    for gen in ("FLUX", "VAR"):
        touch_images(tmp_path / "TestSet" / gen / "0_real", 1)
        touch_images(tmp_path / "TestSet" / gen / "1_fake", 2)
    for root in (tmp_path, tmp_path / "TestSet"):
        subs = load_benchmark("holmes", str(root))
        assert [s.name for s in subs] == HOLMES
        by = {s.name: s for s in subs}
        assert by["VAR"].counts == {"real": 1, "fake": 2} and by["Janus-Pro-7B"].status == "missing"


def test_ditfake_pairs_fakes_alone_with_the_shared_reals(tmp_path):
    from fitgap.benchmarks import DITFAKE

    touch_images(tmp_path / "FLUX.1-schnell", 3)  # fakes alone, as the generation script writes them
    touch_images(tmp_path / "PixArt-Sigma-XL-2-1024-MS" / "0_real", 1)
    touch_images(tmp_path / "PixArt-Sigma-XL-2-1024-MS" / "1_fake", 1)
    subs = load_benchmark("ditfake", str(tmp_path))
    by = {s.name: s for s in subs}
    assert [s.name for s in subs] == DITFAKE
    assert by["FLUX.1-schnell"].counts == {"real": 0, "fake": 3} and "no --real-root" in by["FLUX.1-schnell"].note
    assert by["PixArt-Sigma-XL-2-1024-MS"].counts == {"real": 1, "fake": 1}
    assert by["stable-diffusion-3-medium-diffusers"].status == "missing"
    touch_images(tmp_path / "real", 4)  # the default real root is neither a subset nor a source of fakes
    by = {s.name: s for s in load_benchmark("ditfake", str(tmp_path))}
    assert "real" not in by and by["FLUX.1-schnell"].counts == {"real": 4, "fake": 3}
    assert by["PixArt-Sigma-XL-2-1024-MS"].counts == {"real": 1, "fake": 1}
