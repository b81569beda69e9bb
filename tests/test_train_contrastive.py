"""Pre-training end to end: torchrun with 2 CPU ranks, kill and resume, odd images."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from imaging import write_images, write_odd_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["device=cpu", "model.backbone=test_resnet", "model.proj_hidden=32", "model.proj_dim=16",
        "plan.patch=8", "ratios.list=[3/2, 4/3, 5/4]", "data.min_side=40", "data.workers=0",
        "train.amp=none", "train.channels_last=false", "optim.lr=1e-3", "optim.warmup_steps=2",
        "train.log_every=1", "model.trace_features=0", "loss.backbone_weight=0"]  # 8-px patches: below the trace branch's 18 px


def run_cmd(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(records):
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def kill_after_checkpoint(cmd, ck, min_step, timeout=240):
    """Start `cmd` in its own process group and SIGKILL the whole group once checkpoint `ck` holds
    step >= min_step (a launcher and every rank it started die at once, as on a lost node)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(ck) and torch.load(ck, weights_only=True)["step"] >= min_step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    write_images(str(folder), 12)
    return str(folder)


@pytest.mark.slow
def test_torchrun_two_ranks(images, tmp_path):
    out = str(tmp_path / "runs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY, f"data.train={images}",
           f"out_dir={out}", "name=ddp", "train.batch=32", "train.steps_per_epoch=2", "train.epochs=2",
           "train.ckpt_every=1", "probe.images=null",
           # the demo's trace branch (its batch norms) on both ranks: 24-px patches, the least it takes + 6;
           # with the backbone's own projection and loss, gathered from both ranks as the whole one's
           "plan.patch=24", "model.trace_features=8", "data.min_side=64", "loss.backbone_weight=1.0"]
    r = run_cmd(cmd, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    records = read_log(os.path.join(out, "ddp", "log.jsonl"))
    final = [x for x in records if x.get("final")][-1]
    assert final["ranks_in_sync"] and len(final["rank_checksums"]) == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(records).values())
    assert sorted(losses(records)) == [1, 2, 3, 4]
    ck = torch.load(os.path.join(out, "ddp", "checkpoint.pt"), weights_only=True)
    assert ck["step"] == 4 and isinstance(ck["config"], dict) and ck["config"]["name"] == "ddp"
    assert ck["config"]["model"]["trace_features"] == 8 and any(k.startswith("encoder.trace.") for k in ck["model"])
    assert any(k.startswith("backbone_head.") for k in ck["model"])
    assert os.path.exists(os.path.join(out, "ddp", "config.yaml"))


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(images, tmp_path):
    out = str(tmp_path / "runs")
    common = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
              f"data.train={images}", f"out_dir={out}", "train.batch=16", "train.steps_per_epoch=14",
              "train.epochs=2", "train.ckpt_every=3", "probe.images=null"]
    r = run_cmd(common + ["name=straight"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = losses(read_log(os.path.join(out, "straight", "log.jsonl")))
    assert sorted(straight) == list(range(1, 29))

    ck = os.path.join(out, "killed", "checkpoint.pt")
    kill_after_checkpoint(common + ["name=killed"], ck, 6)
    resumed_from = torch.load(ck, weights_only=True)["step"]
    assert 6 <= resumed_from < 28
    r = run_cmd(common + ["name=killed"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    resumed = losses(read_log(os.path.join(out, "killed", "log.jsonl")))
    assert sorted(resumed) == list(range(1, 29))
    for step in range(resumed_from + 1, 29):
        assert abs(resumed[step] - straight[step]) <= 1e-6, (step, resumed[step], straight[step])
    # a finished run re-run does nothing more
    r = run_cmd(common + ["name=killed"], timeout=300)
    assert r.returncode == 0 and sorted(losses(read_log(os.path.join(out, "killed", "log.jsonl")))) == list(range(1, 29))
    # the same run name with another ratio set is refused, and the checkpoint is left as it was
    cfg_file = os.path.join(out, "killed", "config.yaml")
    before = (os.path.getmtime(ck), open(cfg_file).read())
    r = run_cmd(common + ["name=killed", "ratios.list=[3/2, 4/3]", "train.epochs=3"], timeout=300)
    assert r.returncode == 2 and "ratios.list: differ from" in r.stderr, r.stderr[-2000:]
    assert (os.path.getmtime(ck), open(cfg_file).read()) == before
    # so is another augmentation (the demo config's sharpen band is part of what the run trained on)
    r = run_cmd(common + ["name=killed", "augment.sharpen=[0, 0.5]", "train.epochs=3"], timeout=300)
    assert r.returncode == 2 and "augment.sharpen: differ from" in r.stderr, r.stderr[-2000:]
    assert (os.path.getmtime(ck), open(cfg_file).read()) == before


@pytest.mark.slow
def test_odd_images_are_skipped_and_reported(tmp_path):
    write_odd_images(str(tmp_path / "odd"))
    out = str(tmp_path / "runs")
    cmd = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
           f"data.train={tmp_path / 'odd'}", f"out_dir={out}", "name=odd", "train.batch=16",
           "train.steps_per_epoch=4", "train.epochs=1", "probe.images=null"]
    r = run_cmd(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped" in r.stdout
    epoch = [x for x in read_log(os.path.join(out, "odd", "log.jsonl")) if "skipped_images" in x][-1]
    s = epoch["skipped_images"]
    assert s["count"] >= 1 and set(s["reasons"]) <= {"unreadable", "empty file", "too small"}
    names = " ".join(s["examples"])
    assert s["files"] >= 1 and any(k in names for k in ("truncated", "empty", "text", "tiny"))


def test_bad_config_is_refused_before_work(tmp_path, images):
    cmd = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
           f"data.train={images}", f"out_dir={tmp_path}", "name=bad", "train.batch=30"]
    r = run_cmd(cmd, timeout=120)
    assert r.returncode == 2 and "train.batch" in r.stderr
    assert not os.path.exists(tmp_path / "bad" / "checkpoint.pt")
    r = run_cmd(cmd[:-1] + ["train.batchsize=32"], timeout=120)
    assert r.returncode == 2 and "unknown key 'train.batchsize'" in r.stderr


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, images):
    cmd = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
           f"data.train={images}", f"out_dir={tmp_path}", "name=nan", "train.batch=16",
           "train.steps_per_epoch=3", "optim.lr=1e30", "optim.warmup_steps=0", "probe.images=null"]
    r = run_cmd(cmd, timeout=120)
    assert r.returncode == 2 and "loss is nan" in r.stderr.lower(), r.stderr[-2000:]


def test_truncated_checkpoint_is_one_line_with_what_to_do(tmp_path, images):
    run_dir = tmp_path / "trunc"
    run_dir.mkdir()
    torch.save({"step": 3}, run_dir / "checkpoint_0001.pt")
    data = (run_dir / "checkpoint_0001.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    cmd = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
           f"data.train={images}", f"out_dir={tmp_path}", "name=trunc", "train.batch=16", "probe.images=null"]
    r = run_cmd(cmd, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot read checkpoint" in r.stderr and "checkpoint_0001.pt" in r.stderr and "name=" in r.stderr
    # a reader (probe, analysis, evaluate) gets a reader's advice, in one line, with exit code 2
    for cmd in ([sys.executable, "-m", "fitgap.probe", "--ckpt", str(run_dir / "checkpoint.pt"), "--images", images],
                [sys.executable, "-m", "fitgap.analysis", "similarity", "--ckpt", str(run_dir / "checkpoint.pt"),
                 "--images", images],
                [sys.executable, "evaluate.py", "--ckpt", str(run_dir / "checkpoint.pt"), "--bench", "mini"]):
        r = run_cmd(cmd, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "cannot read checkpoint" in r.stderr and "copy it again" in r.stderr and "name=" not in r.stderr


def test_only_the_projects_errors_lose_their_traceback():
    from fitgap.cli import run_main
    from fitgap.errors import InputError

    def user_error():
        raise InputError("--root: '/nope' is not a folder")

    def library_error():
        raise ValueError("SyncBatchNorm layers only work with GPU modules")  # e.g. from torch

    with pytest.raises(SystemExit) as e:
        run_main(user_error)
    assert e.value.code == 2
    with pytest.raises(ValueError, match="SyncBatchNorm"):  # propagates: traceback and non-zero exit
        run_main(library_error)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args_node0, args_node1, timeout=240):
    """Two torchrun launches on this machine, one process each, as two nodes of one job."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = []
    for node, extra in enumerate((args_node0, args_node1)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               "train_contrastive.py", *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return out


@pytest.mark.slow
def test_two_node_launch_and_the_resume_decision_of_rank_0(images, tmp_path):
    common = ["--config", "configs/demo_pretrain.yaml", *TINY, f"data.train={images}", "name=nodes",
              "train.batch=32", "train.steps_per_epoch=2", "probe.images=null"]
    shared = str(tmp_path / "shared")
    res = two_nodes(common + [f"out_dir={shared}", "train.epochs=1"], common + [f"out_dir={shared}", "train.epochs=1"])
    assert all(rc == 0 for rc, _, _ in res), [e[-2000:] for _, _, e in res]
    final = [x for x in read_log(os.path.join(shared, "nodes", "log.jsonl")) if x.get("final")][-1]
    assert final["ranks_in_sync"] and len(final["rank_checksums"]) == 2
    # node 1 has its own run folder without the checkpoint rank 0 resumes from: the whole group stops
    # with a message naming the rank and the path, within the timeout (no hang)
    alone = str(tmp_path / "node1_only")
    t0 = time.time()
    res = two_nodes(common + [f"out_dir={shared}", "train.epochs=2"], common + [f"out_dir={alone}", "train.epochs=2"],
                    timeout=180)
    assert time.time() - t0 < 180
    assert all(rc != 0 for rc, _, _ in res)
    msg = res[0][2] + res[1][2]
    want = os.path.join(alone, "nodes", "checkpoint.pt")
    assert f"rank 1 cannot read {want}, which rank 0 resumes from" in msg, msg[-3000:]


@pytest.mark.slow
def test_kill_and_resume_on_two_ranks_continues_every_rank(images, tmp_path):
    out = str(tmp_path / "runs")
    common = [*TINY, f"data.train={images}", f"out_dir={out}", "train.batch=32", "train.steps_per_epoch=8",
              "train.epochs=2", "train.ckpt_every=3", "probe.images=null"]

    def launch(name, **kw):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *common, f"name={name}"]
        return cmd

    r = run_cmd(launch("straight"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = {x["step"]: x for x in read_log(os.path.join(out, "straight", "log.jsonl")) if "loss" in x}
    assert sorted(straight) == list(range(1, 17))

    ck = os.path.join(out, "killed", "checkpoint.pt")
    kill_after_checkpoint(launch("killed"), ck, 6)  # torchrun and both ranks
    saved = torch.load(ck, weights_only=True)
    resumed_from = saved["step"]
    assert 6 <= resumed_from < 16 and len(saved["rng_ranks"]) == 2
    assert not torch.equal(saved["rng_ranks"][0]["torch"], saved["rng_ranks"][1]["torch"])  # one stream per rank
    r = run_cmd(launch("killed"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = {x["step"]: x for x in read_log(os.path.join(out, "killed", "log.jsonl")) if "loss" in x}
    assert sorted(resumed) == list(range(1, 17))
    for step in range(resumed_from + 1, 17):
        a, b = resumed[step], straight[step]
        assert abs(a["loss"] - b["loss"]) <= 1e-6, step
        assert abs(a["rank_losses"][1] - b["rank_losses"][1]) <= 1e-6, step  # rank 1 continues exactly too
    end_a = torch.load(ck, weights_only=True)["rng_ranks"]
    end_b = torch.load(os.path.join(out, "straight", "checkpoint.pt"), weights_only=True)["rng_ranks"]
    assert all(torch.equal(x["torch"], y["torch"]) for x, y in zip(end_a, end_b))  # each rank got its own back


def test_probe_every_n_steps_logs_a_curve(images, tmp_path):
    heldout = tmp_path / "heldout"
    write_images(str(heldout), 3, size=(120, 120), seed=50)
    cmd = [sys.executable, "train_contrastive.py", "--config", "configs/demo_pretrain.yaml", *TINY,
           f"data.train={images}", f"out_dir={tmp_path}", "name=curve", "train.batch=16", "train.steps_per_epoch=4",
           f"probe.images={heldout}", "probe.every=2", "probe.window=96", "probe.patches=4", "probe.baseline=false"]
    r = run_cmd(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    probes = [x for x in read_log(str(tmp_path / "curve" / "log.jsonl")) if "probe" in x]
    assert [x["step"] for x in probes] == [2, 4]  # during training, then the final probe
    assert probes[0]["elapsed_s"] < probes[1]["elapsed_s"] and "phase" in probes[0]["probe"]
    straight = losses(read_log(str(tmp_path / "curve" / "log.jsonl")))
    cmd2 = [c for c in cmd if not c.startswith("probe.every")] + ["name=nocurve"]
    assert run_cmd(cmd2, timeout=300).returncode == 0
    assert losses(read_log(str(tmp_path / "nocurve" / "log.jsonl"))) == straight  # probing changes no step
