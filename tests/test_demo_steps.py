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
