"""The demo runs its steps in its own process (`fitgap.demo.sh`): each step must see the arguments it
was given and the torch state a process of its own would have, and a failing step must stop the demo."""
import json
import os
import sys

import pytest
import torch

from fitgap import demo

STEP = """
import json, sys, torch
out = sys.argv[1]
if len(sys.argv) > 2 and sys.argv[2] == "fail":
    sys.exit(3)
with open(out, "w") as f:
    json.dump({"argv": sys.argv, "threads": torch.get_num_threads(), "draw": torch.rand(4).tolist(),
               "deterministic": torch.are_deterministic_algorithms_enabled(), "name": __name__}, f)
torch.set_num_threads(1)
torch.manual_seed(123)
torch.use_deterministic_algorithms(True, warn_only=True)
"""


@pytest.fixture
def fresh_demo_state(monkeypatch):
    """The state the demo captures when it starts, restored after the test."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    det = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(demo, "_START", demo._FreshState())
    yield demo._START
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    torch.use_deterministic_algorithms(det)


def test_script_step_sees_its_arguments_and_the_starting_state(tmp_path, fresh_demo_state):
    script = tmp_path / "step.py"
    script.write_text(STEP)
    start = fresh_demo_state
    expected_draw = torch.rand(4, generator=torch.Generator().set_state(start.rng)).tolist()
    argv_before = sys.argv[:]
    outs = [str(tmp_path / f"out{k}.json") for k in range(2)]
    for out in outs:  # the first step changes threads, generator and flag; the second must not see it
        demo.sh(str(script), out)
    got = [json.load(open(o)) for o in outs]
    for g, out in zip(got, outs):
        assert g["argv"] == [str(script), out]
        assert g["name"] == "__main__"
        assert g["threads"] == start.threads
        assert g["draw"] == expected_draw
        assert g["deterministic"] == start.deterministic
    assert sys.argv == argv_before


def test_failing_step_stops_the_demo_with_its_status(tmp_path, fresh_demo_state):
    script = tmp_path / "step.py"
    script.write_text(STEP)
    argv_before = sys.argv[:]
    with pytest.raises(SystemExit) as exc:
        demo.sh(str(script), str(tmp_path / "x.json"), "fail")
    assert exc.value.code == 3
    assert not os.path.exists(tmp_path / "x.json")
    assert sys.argv == argv_before


def test_module_step_gets_its_argv(tmp_path, fresh_demo_state, monkeypatch):
    import types

    seen = {}
    mod = types.ModuleType("fitgap_fake_step")

    def main(argv=None):
        seen["argv"] = argv
        seen["sys.argv"] = sys.argv[:]
        seen["threads"] = torch.get_num_threads()
        torch.set_num_threads(1)

    mod.main = main
    monkeypatch.setitem(sys.modules, "fitgap_fake_step", mod)
    demo.sh("-m", "fitgap_fake_step", "--out", "somewhere")
    assert seen["argv"] == ["--out", "somewhere"]
    assert seen["sys.argv"] == ["fitgap_fake_step", "--out", "somewhere"]
    assert seen["threads"] == fresh_demo_state.threads


def test_real_step_runs_in_process(tmp_path, fresh_demo_state):
    """A step the demo really runs (the audit of a tiny folder benchmark) writes what its command would."""
    from PIL import Image

    root = tmp_path / "bench"
    for label in ("0_real", "1_fake"):
        d = root / "fam" / label
        d.mkdir(parents=True)
        for k in range(6):
            Image.new("RGB", (32, 32), (10 * k, 50 if label == "1_fake" else 90, 7)).save(d / f"{k}.png")
    out = tmp_path / "audit"
    demo.sh("-m", "fitgap.audit", "--bench", "folder", "--root", str(root), "--out", str(out), "--workers", "0")
    report = json.load(open(out / "audit.json"))
    assert "fam" in report["subsets"]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Stop(Exception):
    pass


@pytest.fixture
def demo_in(tmp_path, monkeypatch, fresh_demo_state):
    """The demo's main() in tmp_path with the shipped configs, no photo export or mini-benchmark build, and
    every step recorded instead of run (an evaluation writes an empty results.json; the second one stops
    the demo). Yields the recorded steps."""
    import fitgap.minibench
    import fitgap.photos

    monkeypatch.setattr(demo, "PRETRAIN_CONFIG", os.path.join(REPO, "configs", "demo_pretrain.yaml"))
    monkeypatch.setattr(demo, "FINETUNE_CONFIG", os.path.join(REPO, "configs", "demo_finetune.yaml"))
    monkeypatch.setattr(demo, "RUN", demo.RUN)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for split in ("train", "heldout", "probe"):  # where the shipped config expects the exported photos
        (tmp_path / ".cache" / "photos" / split).mkdir(parents=True)
    monkeypatch.setattr(fitgap.photos, "export_photos", lambda folder: None)
    monkeypatch.setattr(fitgap.photos, "export_probe_photos", lambda folder: (os.path.join(folder, "probe"), 23))
    monkeypatch.setattr(fitgap.photos, "missing_debian_photos", lambda: [])
    built = []
    monkeypatch.setattr(fitgap.minibench, "ensure_minibench", lambda *a, **k: built.append(1))
    steps = []

    def record(*args):
        steps.append(list(args))
        if args[0] == "evaluate.py":
            if sum(s[0] == "evaluate.py" for s in steps) == 2:
                raise _Stop
            out = args[args.index("--out") + 1]
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "results.json"), "w") as f:
                f.write("{}")

    monkeypatch.setattr(demo, "sh", record)
    yield steps, built, tmp_path


DATA = ["--pretrain", "data.train=photos", "--pretrain", "probe.images=null"]


def test_a_changed_demo_needs_a_run_folder_of_its_own(demo_in, capsys):
    """Overrides without --run would resume (and be refused by) or mix with the shipped demo's runs/demo:
    refused by the argument parser, nothing built or run; a --run that is not a plain folder name, or that
    is the shipped demo's own, too."""
    steps, built, _ = demo_in
    with pytest.raises(SystemExit) as exc:
        demo.main(["--pretrain", "model.trace_features=256"])
    assert exc.value.code == 2 and "need --run NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        demo.main(["--run", "../elsewhere", "--finetune", "augment.sharpen=[-1,1]"])
    assert exc.value.code == 2 and "--run '../elsewhere'" in capsys.readouterr().err
    for shipped in ("demo", "demo_seed3"):
        with pytest.raises(SystemExit) as exc:
            demo.main(["--run", shipped, "--pretrain", "model.trace_features=256"])
        assert exc.value.code == 2 and "the shipped demo's folder" in capsys.readouterr().err
    assert steps == [] and built == []


@pytest.mark.parametrize("flag, override, named", [
    ("--pretrain", "model.trace_features=abc", "model.trace_features"),
    ("--pretrain", "train.batch=100", "train.batch"),
    ("--pretrain", "model.nope=1", "model.nope"),
    ("--finetune", "augment.sharpen=[2,1]", "augment.sharpen"),
    ("--finetune", "seed=3", "the demo sets seed itself"),
])
def test_bad_overrides_are_refused_before_any_work(demo_in, capsys, flag, override, named):
    """Every override is checked as the step would check it, before the mini-benchmark's build and any run:
    exit 2 naming the key, no step run, no run folder."""
    steps, built, tmp = demo_in
    with pytest.raises(SystemExit) as exc:
        demo.main(["--run", "variant", *DATA, flag, override])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err
    assert steps == [] and built == [] and not (tmp / "runs").exists()


def test_overrides_reach_pretraining_both_fine_tunings_and_the_scratch_architecture(demo_in):
    """--pretrain goes to pre-training and, as the architecture, to the scratch ablation; --finetune to both
    fine-tunings and to the crop the frozen transfer uses; all of it under runs/<--run>."""
    steps, built, _ = demo_in
    with pytest.raises(_Stop):
        demo.main(["--run", "variant", "--seed", "4", *DATA, "--pretrain", "model.trace_features=256",
                   "--finetune", "augment.sharpen=[-1,1]", "--finetune", "eval.size=48"])
    assert built == [1]
    pre, transfer, ft, ev, ft_scratch, _ = steps
    assert pre[0] == "train_contrastive.py" and "model.trace_features=256" in pre
    assert pre[-2:] == ["name=variant/pretrain", "seed=4"]
    assert transfer[:3] == ["-m", "fitgap.analysis", "transfer"]
    assert transfer[transfer.index("--crop") + 1] == "48"
    assert transfer[transfer.index("--ckpt") + 1] == os.path.join("runs", "variant", "pretrain", "checkpoint.pt")
    for step in (ft, ft_scratch):
        assert step[0] == "finetune.py" and "augment.sharpen=[-1,1]" in step and "eval.size=48" in step
    assert "init=" + os.path.join("runs", "variant", "pretrain", "checkpoint.pt") in ft
    assert "init=null" in ft_scratch and "model.trace_features=256" in ft_scratch
    assert "model.trace_features=256" not in ft  # the pre-trained arm takes its architecture from the checkpoint
    assert ev[ev.index("--ckpt") + 1] == os.path.join("runs", "variant", "finetune", "best.pt")


def test_the_shipped_demo_is_unchanged_by_the_variant_options(demo_in):
    """Without --run / --pretrain / --finetune the steps are the shipped ones: runs/demo, no overrides but
    the demo's own."""
    steps, _, _ = demo_in
    with pytest.raises(_Stop):
        demo.main([])
    pre, transfer, ft, _, ft_scratch, _ = steps
    assert pre == ["train_contrastive.py", "--config", demo.PRETRAIN_CONFIG, "name=demo/pretrain", "seed=0"]
    assert transfer[transfer.index("--crop") + 1] == "64"
    assert ft == ["finetune.py", "--config", demo.FINETUNE_CONFIG, "name=demo/finetune",
                  "init=" + os.path.join("runs", "demo", "pretrain", "checkpoint.pt"), "seed=0"]
    assert ft_scratch[:6] == ["finetune.py", "--config", demo.FINETUNE_CONFIG, "name=demo/finetune_scratch",
                              "init=null", "seed=0"]
    assert "model.trace_features=256" in ft_scratch  # the shipped encoder, trace branch included


def test_a_demo_without_the_debian_photos_says_its_probe_read_fewer(demo_in, monkeypatch, capsys):
    """Without opencv-doc and palapeli-data the probe folder holds the 4 held-out photos alone: the demo
    still runs and says, before any step, that its probe is not the README's; with them it says nothing."""
    import fitgap.photos

    steps, _, _ = demo_in
    with pytest.raises(_Stop):
        demo.main([])
    assert "probe read the 4" not in capsys.readouterr().err
    steps.clear()
    monkeypatch.setattr(fitgap.photos, "export_probe_photos", lambda folder: (os.path.join(folder, "probe"), 0))
    monkeypatch.setattr(fitgap.photos, "missing_debian_photos", lambda: ["apple.jpg", "palapeli-data's photos"])
    with pytest.raises(_Stop):
        demo.main([])
    err = capsys.readouterr().err
    assert "opencv-doc palapeli-data are not installed" in err and "probe read the 4 held-out photos alone" in err
    assert steps[0][0] == "train_contrastive.py"
    # one package of two, or a photo gone: said too, with what is missing
    steps.clear()
    monkeypatch.setattr(fitgap.photos, "export_probe_photos", lambda folder: (os.path.join(folder, "probe"), 18))
    monkeypatch.setattr(fitgap.photos, "missing_debian_photos", lambda: ["palapeli-data's photos"])
    with pytest.raises(_Stop):
        demo.main([])
    err = capsys.readouterr().err
    assert "1 photo(s) are missing (palapeli-data's photos)" in err and "4 held-out photos and 18 of them" in err
