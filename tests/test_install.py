"""`pip install .` builds the extension and gives a working `fitgap` command (into a temporary prefix,
without dependencies: they are this venv's)."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pip_install_gives_a_working_fitgap_command(tmp_path):
    src = tmp_path / "src"  # a copy of the tracked tree, so the build cannot touch this checkout's build/
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(src / f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), src / f)
    prefix = tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA",)}
    env.update(FORCE_CPU="1", MAX_JOBS="2", PIP_NO_INPUT="1")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--prefix", str(prefix), str(src)], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    run_env = dict(env, PYTHONPATH=site)
    exe = prefix / "bin" / "fitgap"
    assert exe.exists()
    r = subprocess.run([str(exe), "--help"], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "detect" in r.stdout and "calibrate" in r.stdout, r.stderr[-2000:]
    code = "import fitgap, rescale_ext; print(fitgap.__file__); print(rescale_ext.cpu_isa())"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                       timeout=120)
    lines = r.stdout.split()
    assert r.returncode == 0 and lines[0].startswith(str(prefix)), r.stdout + r.stderr[-2000:]
    assert lines[1] in ("scalar", "avx2", "avx2shuf", "avx512")  # the compiled op, not the reference
    r = subprocess.run([str(exe), "detect", "--help"], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "usage: fitgap detect" in r.stdout
    assert "serve" in subprocess.run([str(exe), "--help"], cwd=tmp_path, env=run_env, capture_output=True,
                                     text=True, timeout=120).stdout
    page = os.path.join(os.path.dirname(lines[0]), "web", "index.html")  # the page of `fitgap serve` is installed
    assert os.path.isfile(page) and "/v1/detect" in open(page).read()
