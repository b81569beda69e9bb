"""The paper's tables in one command: the plan over a tree of placeholder folders (what CI runs), the
report beside the paper's numbers, and a re-run that skips what is done."""
import json
import os
import subprocess
import sys

import pytest

from fitgap import reproduce as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_on_placeholders_builds_every_config_and_lists_every_subset(tmp_path):
    tree = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "fitgap.reproduce", "--make-placeholders", str(tree)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "scripts/reproduce_paper.sh", "--data", str(tree), "--dry-run", "--gpus", "8",
                        "--out", str(tmp_path / "runs" / "paper")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "14 stages; 0 input(s) missing" in out
    for cfg in ("configs/pretrain.yaml ok", "configs/paper/table1.yaml ok", "configs/paper/table2.yaml ok"):
        assert cfg in out
    assert out.count("--nproc_per_node=8") == 14 and "--protocol jpeg96" in out and "mode=fewshot fewshot.k=8" in out
    for name in ("AttGAN", "STGAN", "car", "horse", "stable_diffusion_v_1_4", "wukong", "Midjourney"):
        assert f"    {name}: empty (0 real, 0 fake)" in out, name
    meta = tmp_path / "genimage_meta.csv"
    meta.write_text("path,width,height,jpeg_quality\n")
    stages = R.plan(str(tree), str(tmp_path / "runs" / "paper"), str(meta))
    sc = next(s for s in stages if s.name == "table2_eval_size_constrained")
    assert "--protocol" in sc.args and str(meta) in sc.args and sc.done.endswith("protocol_size-constrained_metadata/results.json")
    os.rename(tree / "selfsynth" / "BEGAN", tree / "selfsynth" / "BEGAN_moved")
    r = subprocess.run([sys.executable, "-m", "fitgap.reproduce", "--data", str(tree), "--dry-run", "--out",
                        str(tmp_path / "runs" / "paper")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "BEGAN: missing" in r.stdout and "input(s) missing" in r.stdout


def test_the_report_puts_the_paper_beside_the_measured_numbers_and_a_rerun_skips_what_is_done(tmp_path, monkeypatch):
    out = tmp_path / "paper"
    stages = R.plan(str(tmp_path / "data"), str(out))
    t1 = next(s for s in stages if s.name == "table1_eval")
    os.makedirs(os.path.dirname(t1.done))
    rows = [{"subset": "AttGAN", "acc": 0.95, "ap": 0.999}, {"subset": "BEGAN", "acc": None, "ap": None}]
    with open(t1.done, "w") as f:
        json.dump({"rows": rows, "mean": {"acc": 0.9, "ap": 0.98}}, f)
    paper = R.paper_numbers()
    assert paper[("table1_selfsynth", "Ours", "AttGAN", "acc")] == 98.9
    text = R.report(stages, str(out), paper)
    assert "| AttGAN | 98.9 | 95.0 | -3.9 | 100.0 | 99.9 | -0.1 |" in text
    assert "| BEGAN | 100.0 | - | - | 100.0 | - | - |" in text and "| Mean |" in text
    assert "table2_eval: table2_genimage, Ours" in text and "not run yet" in text
    assert (out / "paper_tables.md").read_text().startswith("# The paper's tables, reproduced")
    calls = []
    monkeypatch.setattr(R.subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("a finished stage re-ran"))
    args = R.get_args_parser().parse_args(["--data", str(tmp_path / "data"), "--out", str(out), "--only", "table1_eval"])
    assert R.run(args) == 0 and calls == []
    with pytest.raises(Exception, match="--only: no stage nope"):
        R.run(R.get_args_parser().parse_args(["--data", "x", "--only", "nope"]))
    assert R.paper_name("table2_genimage", "stable_diffusion_v_1_4") == "SDv1.4"
    assert R.paper_name("table2_genimage", "mean") == "mAcc" and R.paper_name("table1_selfsynth", "mean") == "Mean"
