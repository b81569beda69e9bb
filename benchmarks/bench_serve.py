"""`fitgap serve` under a bounded load, on 127.0.0.1 only: requests/s, latency percentiles, errors and
the server's memory before and after, beside `fitgap detect` on the same images in one run.

    python benchmarks/bench_serve.py                 # 1, 4 and 8 concurrent clients, 240 requests each

The server is started as users start it (python -m fitgap.serve, a free loopback port) on a randomly
initialised resnet10t + Laplacian detector at 64-px crops (speed does not depend on its weights). Each
request posts one 500x375 JPEG (cut from the shipped photos) with the page's defaults: centre crop and
the resampling check. Every row sends a fixed number of requests and stops at its time limit, whichever
comes first; a 503 (queue full) counts as an error. The reference is detect's whole path in this
process on the same files (DataLoader workers, batch 16): served requests/s over detect's images/s is
what HTTP, multipart parsing and one-image requests cost. The server's RSS is read from /proc before
the first row (after a warm-up) and after each row; the busiest row runs twice, and memory that still
grows from the first to the second run of the same load is a leak (allocator pools and thread stacks
settle in the first).
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import detect_rate, make_detector, make_jpegs  # noqa: E402
from common import cpu_model, print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(ckpt: str, threads: int, queue: int):
    import httpx

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.Popen([sys.executable, "-m", "fitgap.serve", "--ckpt", ckpt, "--port", str(port), "--device", "cpu",
                          "--calibration", "none", "--queue", str(queue)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"fitgap serve exited: {p.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        if time.time() - t0 > 120:
            p.kill()
            raise RuntimeError("fitgap serve did not start in 120 s")
        time.sleep(0.2)


def load(url: str, blobs, clients: int, total: int, limit_s: float):
    """`total` requests from `clients` threads (each its own connection), stopping at `limit_s`;
    returns (latencies in s of the answered ones, {status: count}, wall seconds)."""
    import httpx

    lat, codes, lock = [], {}, threading.Lock()
    next_i = iter(range(total))
    t_end = time.perf_counter() + limit_s

    def client():
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < t_end:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    code = c.post(url + "/v1/detect", files=[("files", (f"{i}.jpg", blobs[i % len(blobs)]))]).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                dt = time.perf_counter() - t
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == 200:
                        lat.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client) for _ in range(clients)]:
            f.result()
    return lat, codes, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients per row")
    ap.add_argument("--requests", type=int, default=240, help="requests per row (default 240)")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per row at most (default 120)")
    ap.add_argument("--images", type=int, default=200, help="distinct JPEGs, also what detect scores (default 200)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server and of detect")
    args = ap.parse_args()
    import torch

    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
          f"{os.cpu_count()} cores; server and clients on this machine (127.0.0.1); one 500x375 JPEG q90 per "
          f"request, centre crop 64 px + the resampling check\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "jpegs")
        os.makedirs(folder)
        make_jpegs(folder, args.images)
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        blobs = [open(f, "rb").read() for f in files]
        ckpt = os.path.join(tmp, "best.pt")
        make_detector(ckpt, 64)
        torch.set_num_threads(args.threads)
        direct = detect_rate(ckpt, folder, len(files), "center", True, 16, 2)
        server, url = start_server(ckpt, args.threads, queue=2 * max(args.clients))
        try:
            load(url, blobs, 2, 16, 60)  # warm-up
            rss0 = rss_mib(server.pid)
            rows, after = [], []
            # the busiest load twice: memory that grows from the first to the second is a leak
            for k, n in enumerate(list(args.clients) + [max(args.clients)]):
                lat, codes, wall = load(url, blobs, n, args.requests, args.limit)
                ok = codes.get(200, 0)
                errors = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=str) if k != 200) or "0"
                q = np.percentile(np.asarray(lat) * 1000, [50, 95, 99]) if lat else [float("nan")] * 3
                after.append(rss_mib(server.pid))
                rate = ok / wall
                rows.append((f"{n}" + (" (again)" if k == len(args.clients) else ""), sum(codes.values()), ok, errors, f"{rate:.1f}", f"{rate / direct:.2f}x",
                             f"{q[0]:.0f}", f"{q[1]:.0f}", f"{q[2]:.0f}", f"{after[-1]:.0f}"))
        finally:
            server.terminate()
            server.wait(20)
    print_table(["clients", "requests", "ok", "errors", "req/s", "of detect", "p50 ms", "p95 ms", "p99 ms",
                 "RSS after (MiB)"], rows, f"fitgap serve (detect in-process: {direct:.1f} images/s; server RSS "
                                           f"after warm-up {rss0:.0f} MiB)")
    growth = after[-1] - after[-2]
    print(f"\nRSS over the repeated {max(args.clients)}-client row: {growth:+.0f} MiB "
          f"({'flat' if abs(growth) < 16 else 'GROWING: look for a leak'}); {after[-1] - rss0:+.0f} MiB since the "
          f"warm-up ({rss0:.0f} MiB)")


if __name__ == "__main__":
    main()
