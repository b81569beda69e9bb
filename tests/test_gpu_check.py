"""scripts/gpu_check.sh's argument handling and its GPU check, with a stub nvidia-smi: a typo in the
script shows here, on a CPU machine, instead of on a GPU machine's short lease."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def stub_bin(tmp_path, smi_rc, smi_out, python=True):
    """A PATH of /usr/bin and /bin behind a folder with a stub nvidia-smi and (python=True) `python3`
    pointing at this interpreter; no plain `python`."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "nvidia-smi").write_text(f"#!/bin/sh\necho '{smi_out}'\nexit {smi_rc}\n")
    (d / "nvidia-smi").chmod(0o755)
    if python:  # a wrapper, not a link: a venv's interpreter finds its packages from its own path
        (d / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (d / "python3").chmod(0o755)
    return f"{d}{os.pathsep}/usr/bin{os.pathsep}/bin"


def run(tmp_path, args, path, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "CUDA_HOME")}
    e.update(PATH=path, **env)
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)


def test_no_visible_gpu_stops_at_once_with_what_it_saw(tmp_path):
    path = stub_bin(tmp_path, 9, "NVIDIA-SMI has failed because it could not communicate with the driver")
    r = run(tmp_path, [str(tmp_path / "out")], path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no NVIDIA GPU is visible" in r.stderr and "nvidia-smi rc=9" in r.stderr
    assert "gpu visible False" in r.stderr  # the torch it ran with, python3 found without a `python`
    versions = (tmp_path / "out" / "versions.txt").read_text()
    assert versions.startswith("python: python3;") and "torch " in versions and "cuda" in versions
    assert "CUDA_HOME: /usr/local/cuda" in versions or not os.path.exists("/usr/local/cuda/bin/nvcc")


def test_a_gpu_that_torch_cannot_see_is_refused_too(tmp_path):
    path = stub_bin(tmp_path, 0, "NVIDIA H200, 143771 MiB, 580.159.03")
    r = run(tmp_path, [str(tmp_path / "out")], path, PYTHON=sys.executable)
    assert r.returncode == 3 and "gpu visible False" in r.stderr, r.stdout + r.stderr


def test_unknown_options_and_help(tmp_path):
    path = stub_bin(tmp_path, 0, "x")
    r = run(tmp_path, ["--bogus"], path)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    r = run(tmp_path, ["--help"], path)
    assert r.returncode == 0 and "One prepared GPU run" in r.stdout
