"""rescale_gather: kernels vs the float64 reference, OpenCV, the paper's example, periodicity,
opcheck, torch.compile, argument checks and a seeded fuzz test. `_cuda` variants skip without a GPU."""
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import rescale_ext
from rescale_ext import dst_length, pack_windows, rescale_gather, source_taps
from rescale_ext.reference import rescale_gather_reference

from conftest import requires_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS = [(3, 2), (4, 3), (5, 4), (7, 4), (2, 1), (8, 5), (1, 1), (2, 3), (4, 5), (1, 2), (8, 9)]
TOL = {torch.float32: 1e-4, torch.float16: 0.13, torch.bfloat16: 1.1}  # on the 0..255 scale


def make_sample(seed, n_windows=3, patch=9, ratios=RATIOS, per_window=5, min_side=11, max_side=47):
    """Odd-sized random windows, a ratio each, corners including ones touching the borders."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    windows, rat, corners = [], [], []
    for b in range(n_windows):
        while True:
            h, w = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
            p, q = ratios[rng.randrange(len(ratios))]
            hd, wd = dst_length(h, p, q), dst_length(w, p, q)
            if hd >= patch and wd >= patch:
                break
        windows.append(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g))
        rat.append((p, q))
        corners += [(b, 0, 0), (b, hd - patch, wd - patch), (b, 0, wd - patch)]
        corners += [(b, rng.randint(0, hd - patch), rng.randint(0, wd - patch))
                    for _ in range(per_window)]
    pixels, offsets, sizes = pack_windows(windows)
    return pixels, offsets, sizes, torch.tensor(rat), torch.tensor(corners), patch


def sample_inputs(device):
    out = []
    for seed, kw in enumerate([dict(), dict(n_windows=1, per_window=0, patch=1),
                               dict(n_windows=6, patch=16, min_side=30, max_side=61),
                               dict(n_windows=20, per_window=12, patch=5)]):
        pixels, offsets, sizes, ratios, corners, patch = make_sample(seed, **kw)
        out.append((pixels.to(device), offsets, sizes, ratios, corners, patch))
    return out


def _check_against_reference(device, dtype, channels_last, quantize, normalize):
    mean, std = ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)) if normalize else (None, None)
    for args in sample_inputs(device):
        got = rescale_gather(*args, mean=mean, std=std, quantize=quantize, dtype=dtype,
                             channels_last=channels_last)
        want = rescale_gather_reference(*args, mean=mean, std=std, quantize=quantize,
                                        dtype=torch.float64)
        assert got.shape == want.shape and got.dtype == dtype and got.device.type == device
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
        scale = 1.0 / min(std) if normalize else 1.0
        err = (got.double().cpu() - want).abs().max().item()
        assert err <= TOL[dtype] * max(scale, 1.0 if dtype == torch.float32 else scale), err


ISA_PATHS = rescale_ext.cpu_isa_paths()  # every CPU path this machine can run (scalar, avx2, avx2shuf, avx512)


@pytest.fixture(params=ISA_PATHS)
def isa(request):
    """Run the test on one CPU path, then restore the path chosen at load time."""
    before = rescale_ext.cpu_isa()
    torch.ops.rescale_ext._set_cpu_isa(request.param)
    yield request.param
    torch.ops.rescale_ext._set_cpu_isa(before)


def test_every_isa_path_of_this_cpu_is_tested():
    assert "scalar" in ISA_PATHS and rescale_ext.cpu_isa() in ISA_PATHS
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2 " in flags and " fma " in flags:
        assert "avx2" in ISA_PATHS and "avx2shuf" in ISA_PATHS
    if all(f" {f} " in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        assert "avx512" in ISA_PATHS


def test_isa_is_chosen_at_load_time_by_environment():
    for want in ISA_PATHS:
        r = subprocess.run([sys.executable, "-c", "import rescale_ext; print(rescale_ext.cpu_isa())"], cwd=ROOT,
                           env=dict(os.environ, RESCALE_EXT_ISA=want), capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == want, r.stderr[-1000:]
    r = subprocess.run([sys.executable, "-c", "import rescale_ext; print(rescale_ext.cpu_isa())"], cwd=ROOT,
                       env=dict(os.environ, RESCALE_EXT_ISA="sse9"), capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == rescale_ext.cpu_isa() and "RESCALE_EXT_ISA=sse9" in r.stderr
    with pytest.raises((ValueError, RuntimeError), match="scalar, avx2, avx2shuf or avx512"):
        torch.ops.rescale_ext._set_cpu_isa("sse9")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("quantize", [False, True])
def test_cpu_matches_reference(dtype, channels_last, quantize, isa):
    _check_against_reference("cpu", dtype, channels_last, quantize, normalize=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_normalized_matches_reference(dtype, isa):
    _check_against_reference("cpu", dtype, True, False, normalize=True)


def test_isa_paths_agree():
    """Quantized values are integers: every path gives the same bits; float paths within rounding."""
    before = rescale_ext.cpu_isa()
    try:
        # wide patches: vector groups at every ratio kind, the shuffle tables' 32-byte limit on both
        # sides (17/6 fits, 3/1 does not), and loads that end at the window's last byte
        wide = make_sample(4, n_windows=8, patch=64, ratios=[(17, 6), (3, 1), (1, 3), (3, 2), (7, 4), (2, 3)],
                           min_side=200, max_side=260)
        for args in sample_inputs("cpu") + [make_sample(3, n_windows=4, patch=37, min_side=60, max_side=90), wide]:
            outs = {}
            for name in ISA_PATHS:
                torch.ops.rescale_ext._set_cpu_isa(name)
                outs[name] = (rescale_gather(*args, quantize=True), rescale_gather(*args, mean=(120, 110, 100),
                                                                                   std=(60, 55, 50)))
            for name in ISA_PATHS[1:]:
                assert torch.equal(outs[name][0], outs["scalar"][0]), name
                torch.testing.assert_close(outs[name][1], outs["scalar"][1], rtol=0, atol=1e-5)
    finally:
        torch.ops.rescale_ext._set_cpu_isa(before)


def test_quantized_is_exact_and_integral(isa):
    for args in sample_inputs("cpu"):
        got = rescale_gather(*args, quantize=True)
        want = rescale_gather_reference(*args, quantize=True, dtype=torch.float64)
        assert torch.equal(got.double(), want)
        assert torch.equal(got, got.round())


def test_hundreds_of_patches_match_reference(isa):
    pixels, offsets, sizes, ratios, corners, patch = make_sample(7, n_windows=8, per_window=40,
                                                                 patch=12, min_side=40, max_side=90)
    assert 300 <= corners.shape[0] <= 400
    got = rescale_gather(pixels, offsets, sizes, ratios, corners, patch)
    want = rescale_gather_reference(pixels, offsets, sizes, ratios, corners, patch,
                                    dtype=torch.float64)
    assert (got.double() - want).abs().max().item() <= 1e-4


def test_matches_reference_at_imagenet_size(isa):
    """A 500x375 window: float32 F.interpolate drifts here, the kernel must not."""
    g = torch.Generator().manual_seed(3)
    win = torch.randint(0, 256, (375, 500, 3), dtype=torch.uint8, generator=g)
    pixels, offsets, sizes = pack_windows([win, win, win])
    ratios = torch.tensor([[3, 2], [7, 5], [5, 7]])
    corners = torch.tensor([[0, 120, 200], [1, 140, 220], [2, 400, 500]])
    got = rescale_gather(pixels, offsets, sizes, ratios, corners, 64)
    want = rescale_gather_reference(pixels, offsets, sizes, ratios, corners, 64, dtype=torch.float64)
    assert (got.double() - want).abs().max().item() <= 1e-4


def test_interior_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(11)
    for (p, q) in [(3, 2), (4, 3), (5, 4), (7, 5), (2, 3), (4, 5)]:
        h, w = 61, 83
        win = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
        hd, wd = dst_length(h, p, q), dst_length(w, p, q)
        ref = cv2.resize(win.numpy().astype(np.float32), None, fx=q / p, fy=q / p,
                         interpolation=cv2.INTER_LINEAR)
        m = 3  # interior margin in destination pixels (OpenCV rounds its output size)
        patch = min(hd, wd) - 2 * m
        pixels, offsets, sizes = pack_windows([win])
        got = rescale_gather(pixels, offsets, sizes, torch.tensor([[p, q]]),
                             torch.tensor([[0, m, m]]), patch)[0].permute(1, 2, 0).numpy()
        want = ref[m:m + patch, m:m + patch]
        assert np.abs(got - want).max() <= 0.01, (p, q)


def test_paper_example_6x6_to_4x4():
    """Ratio 3/2: 6x6 -> 4x4; destination pixels 1 and 3 (and 0 and 2) use the same weights."""
    i0, i1, w1, lam = source_taps(torch.arange(4), 3, 2, 6)
    assert dst_length(6, 3, 2) == 4
    assert i0.tolist() == [0, 1, 3, 4] and i1.tolist() == [1, 2, 4, 5]
    assert lam.tolist() == [0.25, 0.75, 0.25, 0.75]
    assert lam[1] == lam[3] and lam[0] == lam[2]
    # A ramp along x: value = 10 * column; the rescaled ramp sits at the source coordinates.
    ramp = (torch.arange(6) * 10).to(torch.uint8).view(1, 6, 1).expand(6, 6, 3).contiguous()
    pixels, offsets, sizes = pack_windows([ramp])
    out = rescale_gather(pixels, offsets, sizes, torch.tensor([[3, 2]]), torch.tensor([[0, 0, 0]]), 4)
    assert out[0, 0, 0].tolist() == [2.5, 17.5, 32.5, 47.5]


def test_periodic_patches_are_bit_identical():
    """A source with period p (in source pixels) rescaled by p/q: patches at corners congruent mod q
    are bit-identical; patches at another phase are not."""
    g = torch.Generator().manual_seed(5)
    for (p, q) in [(3, 2), (4, 3), (5, 4), (2, 3), (5, 3)]:
        tile = torch.randint(0, 256, (p, p, 3), dtype=torch.uint8, generator=g)
        src = tile.repeat(40, 40, 1).contiguous()
        pixels, offsets, sizes = pack_windows([src])
        patch = 8
        base = 3 * q  # away from the clamped first destination rows/columns
        corners = torch.tensor([[0, base, base], [0, base + q, base + 2 * q],
                                [0, base + 5 * q, base + 3 * q], [0, base + 1, base],
                                [0, base, base + 1]])
        for quantize in (False, True):
            out = rescale_gather(pixels, offsets, sizes, torch.tensor([[p, q]]), corners, patch,
                                 quantize=quantize)
            assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2]), (p, q)
            assert not torch.equal(out[0], out[3]) and not torch.equal(out[0], out[4]), (p, q)


def test_unreduced_ratio_equals_reduced():
    pixels, offsets, sizes, ratios, corners, patch = make_sample(2)
    a = rescale_gather(pixels, offsets, sizes, ratios, corners, patch)
    b = rescale_gather(pixels, offsets, sizes, ratios * 3, corners, patch)
    assert torch.equal(a, b)


def test_empty_corners():
    pixels, offsets, sizes, ratios, _, patch = make_sample(1)
    out = rescale_gather(pixels, offsets, sizes, ratios, torch.empty((0, 3), dtype=torch.int64), patch)
    assert out.shape == (0, 3, patch, patch)


def test_opcheck():
    assert rescale_ext.HAVE_COMPILED
    for args in sample_inputs("cpu"):
        for kwargs in ({}, {"quantize": True, "channels_last": True, "dtype": torch.bfloat16},
                       {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}):
            torch.library.opcheck(torch.ops.rescale_ext.rescale_gather.default, args, kwargs)


def test_compile_fullgraph_matches_eager():
    pixels, offsets, sizes, ratios, corners, patch = make_sample(4)

    def build(pixels, offsets, sizes, ratios, corners):
        x = rescale_gather(pixels, offsets, sizes, ratios, corners, patch, mean=(128.0,) * 3,
                           std=(64.0,) * 3, channels_last=True)
        return x * 2 + 1

    compiled = torch.compile(build, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(pixels, offsets, sizes, ratios, corners),
                               build(pixels, offsets, sizes, ratios, corners), rtol=0, atol=0)


def _valid():
    pixels, offsets, sizes = pack_windows([torch.zeros(20, 30, 3, dtype=torch.uint8)])
    return dict(pixels=pixels, offsets=offsets, sizes=sizes, ratios=torch.tensor([[3, 2]]),
                corners=torch.tensor([[0, 0, 0]]), patch=8)


BAD = [
    ("corners", torch.tensor([[0, 6, 0]]), ValueError, "corners\\[0\\]"),   # 6 + 8 > 13 rows
    ("corners", torch.tensor([[0, 0, 13]]), ValueError, "corners\\[0\\]"),  # 13 + 8 > 20 cols
    ("corners", torch.tensor([[0, -1, 0]]), ValueError, "corners\\[0\\]"),
    ("corners", torch.tensor([[1, 0, 0]]), ValueError, "names window 1"),
    ("corners", torch.tensor([[0, 0]]), ValueError, "corners must have shape"),
    ("corners", torch.tensor([[0, 0, 0]], dtype=torch.int32), TypeError, "corners must be int64"),
    ("offsets", torch.tensor([1]), ValueError, "runs past the end of pixels"),
    ("offsets", torch.tensor([-1]), ValueError, "runs past the end of pixels"),
    ("offsets", torch.tensor([0, 0]), ValueError, "offsets has 2 windows"),
    ("sizes", torch.tensor([[21, 30]]), ValueError, "runs past the end of pixels"),
    ("sizes", torch.tensor([[0, 30]]), ValueError, "sizes\\[0\\]"),
    ("ratios", torch.tensor([[0, 2]]), ValueError, "ratios\\[0\\]"),
    ("ratios", torch.tensor([[3, -2]]), ValueError, "ratios\\[0\\]"),
    ("ratios", torch.tensor([[3, 2053]]), ValueError, "q must be <= 1024"),
    ("patch", 0, ValueError, "patch must be positive"),
    ("patch", -3, ValueError, "patch must be positive"),
    ("pixels", torch.zeros(1800, dtype=torch.float32), TypeError, "pixels must be uint8"),
    ("pixels", torch.zeros(2, 900, dtype=torch.uint8), ValueError, "pixels must be 1-D"),
    ("pixels", torch.zeros(3600, dtype=torch.uint8)[::2], ValueError, "pixels must be contiguous"),
]


@pytest.mark.parametrize("name,value,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_invalid_arguments_are_refused(name, value, exc, match, impl):
    args = _valid()
    args[name] = value
    fn = rescale_gather if impl == "kernel" else rescale_gather_reference
    with pytest.raises(exc, match=match):
        fn(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mean=[1.0, 2.0]), "mean must have 3 values"),
    (dict(std=[1.0, 0.0, 1.0]), "std"),
    (dict(dtype=torch.int32), "dtype"),
])
def test_invalid_options_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rescale_gather(**_valid(), **kwargs)


def _fuzz_ratio(rng, h, w, max_dst=160):
    """Half small ratios, half drawn log-uniformly up to the limits (q <= 1024, p <= 2^20), keeping
    the destination image small enough for the float64 reference."""
    if rng.random() < 0.5:
        return rng.randint(1, 9), rng.randint(1, 9)
    while True:
        q = int(round(2 ** rng.uniform(0, 10)))
        p = max(1, min(1 << 20, int(round(q * 2 ** rng.uniform(-3, 10)))))
        if dst_length(max(h, w), p, q) <= max_dst:
            return p, q


def test_fuzz_valid_and_invalid_calls(isa):
    """1,000 seeded random calls, valid and invalid: no crash; valid ones equal the reference;
    invalid ones raise ValueError/TypeError like the reference."""
    rng = random.Random(1234)
    n_valid = n_invalid = 0
    for it in range(1000):
        valid = rng.random() < 0.5
        nwin = rng.randint(1, 3)
        windows, rat, dst = [], [], []
        for _ in range(nwin):
            h, w = rng.randint(1, 24), rng.randint(1, 24)
            windows.append(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8))
            if valid:
                p, q = _fuzz_ratio(rng, h, w)
            else:
                p, q = rng.choice([(rng.randint(-1, 9), rng.randint(-1, 9)), (rng.randint(1, 9), 1025 + rng.randint(0, 9)),
                                   ((1 << 20) + 1 + 2 * rng.randint(0, 9), 1024)])
            rat.append((p, q))
            dst.append((dst_length(h, p, q), dst_length(w, p, q)) if p > 0 and q > 0 else (0, 0))
        pixels, offsets, sizes = pack_windows(windows)
        if valid:
            patch = rng.randint(1, 10)
            fits = [b for b in range(nwin) if min(dst[b]) >= patch]
            corners = [(b, rng.randint(0, dst[b][0] - patch), rng.randint(0, dst[b][1] - patch))
                       for b in (rng.choice(fits) for _ in range(rng.randint(0, 6)))] if fits else []
        else:
            patch = rng.randint(-1, 10)
            corners = [(rng.randint(-1, nwin), rng.randint(-2, 20), rng.randint(-2, 20))
                       for _ in range(rng.randint(0, 6))]
            if rng.random() < 0.2:
                offsets = offsets + rng.randint(-3, 3)
        corners = torch.tensor(corners, dtype=torch.int64).view(-1, 3)
        args = (pixels, offsets, sizes, torch.tensor(rat), corners, patch)
        try:
            want = rescale_gather_reference(*args, dtype=torch.float64)
        except (ValueError, TypeError):
            with pytest.raises((ValueError, TypeError)):
                rescale_gather(*args)
            n_invalid += 1
            continue
        got = rescale_gather(*args)
        if got.numel():
            assert (got.double() - want).abs().max().item() <= 1e-4
        n_valid += 1
    assert n_valid >= 300 and n_invalid >= 300, (n_valid, n_invalid)


def test_built_with_cuda_reports_build():
    assert isinstance(rescale_ext.built_with_cuda(), bool)
    if os.environ.get("FORCE_CUDA", "0") == "1":  # CI builds with FORCE_CUDA=1: the kernel must be in
        assert rescale_ext.built_with_cuda()


def _python(code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = cwd
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_order_does_not_matter():
    """`import rescale_ext` first (torch not yet loaded) must load the compiled module."""
    for code in ("import rescale_ext; assert rescale_ext.HAVE_COMPILED",
                 "from rescale_ext import pack_windows; import rescale_ext; assert rescale_ext.HAVE_COMPILED"):
        r = _python(code, ROOT)
        assert r.returncode == 0, r.stderr[-2000:]


def test_broken_build_raises_and_missing_build_warns(tmp_path):
    pkg = tmp_path / "broken" / "rescale_ext"
    shutil.copytree(os.path.join(ROOT, "rescale_ext"), pkg, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    (pkg / "_C.abi3.so").write_bytes(b"not a shared object")
    r = _python("import rescale_ext", str(tmp_path / "broken"))
    assert r.returncode != 0 and "exists but does not load" in r.stderr, r.stderr[-2000:]
    (pkg / "_C.abi3.so").unlink()
    r = _python("import warnings; warnings.simplefilter('always')\n"
                "import rescale_ext, sys; sys.exit(0 if not rescale_ext.HAVE_COMPILED else 3)", str(tmp_path / "broken"))
    assert r.returncode == 0 and "no compiled module" in r.stderr, r.stderr[-2000:]  # reference fallback


# ----------------------------------------------------------------------------------------------
# The largest accepted denominator (q = 1024): the exact arithmetic must not overflow.

@pytest.mark.parametrize("fill", [0, 255])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("quantize", [False, True])
def test_limits_q1024(fill, dtype, channels_last, quantize, isa):
    big_p = (1 << 20) - 1  # the largest numerator accepted, coprime with 1024
    windows = [torch.full((40, 40, 3), fill, dtype=torch.uint8) for _ in range(3)]
    windows.append(torch.full((1030, 1025, 3), fill, dtype=torch.uint8))
    pixels, offsets, sizes = pack_windows(windows)
    ratios = torch.tensor([[1025, 1024], [2047, 1024], [1023, 1024], [big_p, 1024]])
    corners = torch.tensor([[0, 0, 0], [0, 31, 31], [1, 11, 11], [2, 32, 32], [2, 0, 5]])
    args = (pixels, offsets, sizes, ratios, corners, 8)
    kw = dict(quantize=quantize, dtype=dtype, channels_last=channels_last)
    got = rescale_gather(*args, **kw)
    want = rescale_gather_reference(*args, quantize=quantize, dtype=torch.float64)
    assert torch.equal(got.double(), want) and torch.all(got == fill)
    emu = torch.ops.rescale_ext._rescale_gather_emulated(*args, None, None, quantize, dtype, channels_last, 3)
    assert torch.equal(emu, got)
    one = rescale_gather(pixels, offsets, sizes, ratios, torch.tensor([[3, 0, 0]]), 1, **kw)
    assert torch.all(one == fill)


# ----------------------------------------------------------------------------------------------
# CUDA variants (skip without a GPU)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("quantize", [False, True])
def test_cuda_matches_reference(dtype, channels_last, quantize):
    _check_against_reference("cuda", dtype, channels_last, quantize, normalize=False)


@requires_cuda
def test_cuda_equals_cpu_and_device_metadata():
    for args in sample_inputs("cuda"):
        pixels, offsets, sizes, ratios, corners, patch = args
        gpu = rescale_gather(*args, mean=(120.0,) * 3, std=(60.0,) * 3)
        cpu = rescale_gather(pixels.cpu(), offsets, sizes, ratios, corners, patch, mean=(120.0,) * 3,
                             std=(60.0,) * 3)
        on_dev = rescale_gather(pixels, *(t.cuda() for t in (offsets, sizes, ratios, corners)), patch,
                                mean=(120.0,) * 3, std=(60.0,) * 3)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
        assert torch.equal(gpu, on_dev)
        q_gpu = rescale_gather(*args, quantize=True)
        q_cpu = rescale_gather(pixels.cpu(), offsets, sizes, ratios, corners, patch, quantize=True)
        assert torch.equal(q_gpu.cpu(), q_cpu)


@requires_cuda
def test_cuda_opcheck_and_compile():
    for args in sample_inputs("cuda"):
        torch.library.opcheck(torch.ops.rescale_ext.rescale_gather.default, args, {})
    args = sample_inputs("cuda")[0]
    fn = torch.compile(lambda *a: rescale_gather(*a) * 2, fullgraph=True)
    torch.testing.assert_close(fn(*args), rescale_gather(*args) * 2)


@requires_cuda
@pytest.mark.parametrize("name,value,exc,match", BAD[:14], ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD[:14])])
def test_cuda_invalid_arguments_are_refused(name, value, exc, match):
    args = _valid()
    args[name] = value
    args["pixels"] = args["pixels"].cuda()
    with pytest.raises(exc, match=match):
        rescale_gather(**args)
    torch.cuda.synchronize()  # the context survived: nothing was read out of bounds


@requires_cuda
def test_cuda_periodic_patches_are_bit_identical():
    tile = torch.randint(0, 256, (3, 3, 3), dtype=torch.uint8)
    pixels, offsets, sizes = pack_windows([tile.repeat(40, 40, 1).contiguous()])
    corners = torch.tensor([[0, 6, 6], [0, 8, 10], [0, 7, 6]])
    out = rescale_gather(pixels.cuda(), offsets, sizes, torch.tensor([[3, 2]]), corners, 8)
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])


# ----------------------------------------------------------------------------------------------
# The CUDA kernel's body and grid, executed on the CPU (`emulated`): every line of the GPU's
# arithmetic (taps, blend, rounding, normalisation, dtype conversion, output offsets, the grid-stride
# loop) runs here, on machines without a GPU.

def _emulated(args, grid_y, mean=None, std=None, quantize=False, dtype=torch.float32, channels_last=False):
    return torch.ops.rescale_ext._rescale_gather_emulated(
        *args, None if mean is None else list(mean), None if std is None else list(std), quantize, dtype,
        channels_last, grid_y)


def _emulated_samples():
    out = sample_inputs("cpu")
    big = [(1025, 1024), (2047, 1024), (1023, 1024), (1, 1024), (999, 1000), (5, 3)]
    out.append(make_sample(42, n_windows=6, per_window=3, patch=7, ratios=big, min_side=20, max_side=40))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_emulated_matches_cpu_and_reference(dtype, channels_last, quantize, normalize):
    mean, std = ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)) if normalize else (None, None)
    for k, args in enumerate(_emulated_samples()):
        grid_y = (1, 3, 7, 0)[k % 4]  # 0: the grid the real launch uses
        got = _emulated(args, grid_y, mean, std, quantize, dtype, channels_last)
        cpu = rescale_gather(*args, mean=mean, std=std, quantize=quantize, dtype=dtype, channels_last=channels_last)
        want = rescale_gather_reference(*args, mean=mean, std=std, quantize=quantize, dtype=torch.float64)
        assert got.shape == want.shape and got.dtype == dtype
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        scale = 1.0 / min(std) if normalize else 1.0
        tol = TOL[dtype] * (max(scale, 1.0) if dtype == torch.float32 else scale)
        assert (got.double() - want).abs().max().item() <= tol
        if quantize and not normalize:  # integers 0..255: exact in every dtype, so bit-identical
            assert torch.equal(got, cpu) and torch.equal(got.double(), want)
        else:  # the CPU kernel blends in another float order: within rounding of the dtype
            assert (got.double() - cpu.double()).abs().max().item() <= tol


def test_emulated_grid_stride_covers_every_patch_once():
    args = make_sample(5, n_windows=4, per_window=6, patch=17, min_side=30, max_side=50)  # 289 px: 2 blocks
    ref = _emulated(args, 0, quantize=True)
    for grid_y in (1, 2, 3, 7, 1000):
        assert torch.equal(_emulated(args, grid_y, quantize=True), ref), grid_y
    assert torch.equal(ref, rescale_gather(*args, quantize=True))


def test_emulated_half_and_bfloat16_conversion_is_round_to_nearest_even():
    """The kernel converts to 16-bit floats with its own bit arithmetic; it must equal torch's
    conversion of the float32 result bit for bit, overflow, subnormals and ties included."""
    args = make_sample(9, n_windows=5, per_window=8, patch=6)
    for mean, std in [((0.0, 3.0, 0.5), (1e-3, 1e5, 1e7)), ((128.0, 0.0, 255.0), (0.0117, 3.3e3, 0.37)),
                      ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))]:
        for quantize in (False, True):
            f32 = _emulated(args, 3, mean, std, quantize, torch.float32)
            for dtype in (torch.float16, torch.bfloat16):
                got = _emulated(args, 3, mean, std, quantize, dtype)
                want = f32.to(dtype)
                assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (mean, std, dtype)
    f32 = _emulated(args, 3, (0.0, 3.0, 0.5), (1e-3, 1e5, 1e7), False, torch.float32)
    h = f32.to(torch.float16)
    assert torch.isinf(h).any() and ((h != 0) & (h.abs() < 6.1e-5)).any()  # overflow and subnormals were met


def test_emulated_refuses_what_the_kernel_refuses():
    args = list(make_sample(1))
    args[4] = torch.tensor([[0, -1, 0]])
    with pytest.raises(ValueError, match="corners"):
        _emulated(tuple(args), 1)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_equals_emulated_bit_for_bit(dtype, channels_last):
    """The GPU runs the very arithmetic the emulation runs on the CPU: identical bits."""
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    for args in _emulated_samples():
        for quantize in (False, True):
            emu = _emulated(args, 0, mean, std, quantize, dtype, channels_last)
            gpu = rescale_gather(args[0].cuda(), *args[1:], mean=mean, std=std, quantize=quantize, dtype=dtype,
                                 channels_last=channels_last).cpu()
            assert torch.equal(gpu.view(torch.int16) if dtype != torch.float32 else gpu,
                               emu.view(torch.int16) if dtype != torch.float32 else emu)
