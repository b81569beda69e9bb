"""Configs: overrides, unknown keys, types, ratios and the pre-training checks."""
import os
from fractions import Fraction

import pytest
import torch
import yaml

from fitgap import config as C
from fitgap.config import ConfigError
from fitgap.pretrain import DEFAULTS, build_spec
from fitgap.ratios import ratios_from_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEMO_PRETRAIN = os.path.join(CONFIGS, "demo_pretrain.yaml")
DEMO_FINETUNE = os.path.join(CONFIGS, "demo_finetune.yaml")


def test_overrides_are_typed_and_nested():
    cfg = C.load_config(None, ["train.batch=256", "optim.lr=1e-3", "train.compile=true",
                               "ratios.list=[3/2, 4/3]", "optim.betas=[0.5, 0.9]"], DEFAULTS)
    assert cfg["train"]["batch"] == 256 and cfg["optim"]["lr"] == 1e-3 and cfg["train"]["compile"] is True
    assert cfg["ratios"]["list"] == ["3/2", "4/3"] and cfg["optim"]["betas"] == [0.5, 0.9]


def test_int_for_float_is_accepted():
    assert C.load_config(None, ["optim.lr=1"], DEFAULTS)["optim"]["lr"] == 1.0


@pytest.mark.parametrize("override,match", [
    ("train.batchsize=3", "unknown key 'train.batchsize'.*train.batch"),
    ("trian.batch=3", "unknown key 'trian'"),
    ("train.batch=abc", "train.batch: expected an integer"),
    ("train.batch=1.5", "train.batch: expected an integer"),
    ("train.compile=1", "train.compile: expected true/false"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("train.batch", "not of the form"),
])
def test_bad_overrides_are_refused(override, match):
    with pytest.raises(C.ConfigError, match=match):
        C.load_config(None, [override], DEFAULTS)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"plan": {"patchsize": 3}}))
    with pytest.raises(C.ConfigError, match="plan.patch"):
        C.load_config(str(path), [], DEFAULTS)


def test_shipped_configs_load():
    for path in ("configs/pretrain.yaml", "configs/demo_pretrain.yaml"):
        cfg = C.load_config(path, [], DEFAULTS)
        assert ratios_from_config(cfg["ratios"])


def test_paper_config_values():
    cfg = C.load_config("configs/pretrain.yaml", [], DEFAULTS)
    assert cfg["model"]["backbone"] == "legacy_xception" and cfg["model"]["pretrained"] is False
    assert cfg["plan"]["patch"] == 128 and cfg["train"]["batch"] == 128 and cfg["train"]["epochs"] == 200
    assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["betas"] == [0.9, 0.999]
    assert cfg["optim"]["weight_decay"] == 2e-4
    r = ratios_from_config(cfg["ratios"])
    assert all(1 < x < 2 for x in r) and len(r) == 21
    assert not cfg["model"]["highpass"] and cfg["model"]["stem_stride"] is None


def test_ratios():
    assert ratios_from_config({"list": ["3/2", "2/3", 1.25]}) == [Fraction(2, 3), Fraction(5, 4), Fraction(3, 2)]
    assert ratios_from_config({"range": [1.0, 2.0], "max_denominator": 3}) == [Fraction(4, 3), Fraction(3, 2), Fraction(5, 3)]
    enl = ratios_from_config({"range": [0.5, 1.0], "max_denominator": 4})
    assert enl == [Fraction(2, 3), Fraction(3, 4)]
    for spec, match in [({"list": ["3/2", "6/4"]}, "duplicates"), ({"list": ["1/1"]}, "denominator 1"),
                        ({"list": ["2"]}, "denominator 1"), ({"list": []}, "empty"),
                        ({"list": ["x/2"]}, "not a fraction"), ({"list": ["-3/2"]}, "positive"),
                        ({"list": None, "range": None}, "exactly one"),
                        ({"list": ["3/2"], "range": [1, 2]}, "exactly one"),
                        ({"range": [2, 1], "max_denominator": 4}, "below"),
                        ({"range": [1.0, 1.1], "max_denominator": 4}, "empty")]:
        with pytest.raises(C.ConfigError, match=match):
            ratios_from_config({"max_denominator": 8, **spec})


def _cfg(tmp_path, *overrides):
    return C.load_config(None, [f"data.train={tmp_path}", "ratios.list=[3/2, 4/3]", "plan.patch=16",
                                "data.min_side=100", *overrides], DEFAULTS)


def test_build_spec_checks(tmp_path):
    spec = build_spec(_cfg(tmp_path, "train.batch=32"), world_size=2)
    assert spec.images == 4
    for overrides, world, match in [
        (["train.batch=30"], 4, "not divisible by 4 ranks"),
        (["train.batch=24"], 2, "not a multiple of 8"),
        (["plan.patch=128"], 1, "plan.patch: patches of 128 px need source windows"),
        (["ratios.list=[]"], 1, "empty"),
        (["train.amp=fp8"], 1, "train.amp"),
        (["loss.temperature=0"], 1, "loss.temperature"),
        (["data.train=/nonexistent/x"], 1, "data.train"),
        (["plan.phases_per_image=1"], 1, "phases_per_image"),
    ]:
        with pytest.raises(C.ConfigError, match=match):
            build_spec(_cfg(tmp_path, *overrides), world_size=world)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    from fitgap import checkpoint as ckpt

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cfg = {"model": {"backbone": "a", "dim": 2}, "train": {"epochs": 1}}
    path = str(tmp_path / "checkpoint.pt")
    ckpt.save_training(path, model, opt, scaler, cfg, "pretrain", step=3)
    weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    changed = {"model": {"backbone": "b", "dim": 2}, "train": {"epochs": 5}}
    with pytest.raises(ConfigError, match=r"model.backbone: differ from .*checkpoint.pt.*another name="):
        ckpt.check_resumable(path, changed, ("model",))
    assert model.weight.abs().sum() == 0  # nothing was loaded
    # other sections (a longer schedule) may change
    ckpt.check_resumable(path, dict(cfg, train={"epochs": 5}), ("model",))
    saved = ckpt.restore_training(path, model, opt, scaler)
    assert saved["step"] == 3 and torch.equal(model.weight, weight)
    ckpt.check_resumable(str(tmp_path / "absent.pt"), changed, ("model",))  # nothing to resume
    # a key added to the project after the checkpoint was written counts as its default
    grown = {"model": {"backbone": "a", "dim": 2, "pool_grid": 1}}
    defaults = {"model": {"backbone": "x", "dim": 0, "pool_grid": 1}}
    with pytest.raises(ConfigError, match="model.pool_grid"):
        ckpt.check_resumable(path, grown, ("model",))
    ckpt.check_resumable(path, grown, ("model",), defaults)
    ckpt.check_resumable(path, cfg, ("model",), defaults)  # both sides older than the key (a copied config)
    with pytest.raises(ConfigError, match="model.pool_grid: differ"):
        ckpt.check_resumable(path, {"model": {"backbone": "a", "dim": 2, "pool_grid": 2}}, ("model",), defaults)


@pytest.mark.parametrize("override", ["seed=null", "train.batch=null", "plan.patch=null", "optim.lr=null",
                                      "plan.quantize=null", "normalize.mean=null", "train.amp=null"])
def test_null_is_refused_where_it_is_no_choice(override):
    with pytest.raises(ConfigError, match=override.split("=")[0] + ": null is not a choice"):
        C.load_config(DEMO_PRETRAIN, [override], DEFAULTS)


def test_null_is_accepted_where_the_default_is_null():
    from fitgap.finetune import DEFAULTS as FINETUNE

    cfg = C.load_config(DEMO_PRETRAIN, ["train.steps_per_epoch=null", "probe.images=null"], DEFAULTS)
    assert cfg["train"]["steps_per_epoch"] is None and cfg["probe"]["images"] is None
    # the demo file sets init to a path; null (train from scratch) is still a documented choice
    assert C.load_config(DEMO_FINETUNE, ["init=null"], FINETUNE)["init"] is None


def test_sync_bn_on_cpu_is_refused_before_work(tmp_path):
    from fitgap.finetune import DEFAULTS as FINETUNE
    from fitgap.finetune import check

    cfg = C.load_config(DEMO_PRETRAIN, ["train.sync_bn=true", "device=cpu",
                                                       f"data.train={tmp_path}"], DEFAULTS)
    with pytest.raises(ConfigError, match="train.sync_bn: SyncBatchNorm works on CUDA devices only"):
        build_spec(cfg, 2)
    ft = C.load_config(DEMO_FINETUNE, ["train.sync_bn=true", "init=null"], FINETUNE)
    with pytest.raises(ConfigError, match="train.sync_bn"):
        check(ft, 1)
