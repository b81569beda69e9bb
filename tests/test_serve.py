"""`fitgap serve`: the HTTP API answers as `fitgap detect --json` does, refuses what passes its limits
with a clear 4xx while streaming, fails bad files alone, needs its token off loopback, and sheds load
with 503 instead of piling it up."""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from imaging import detector_ckpt, smooth_noise

pytest.importorskip("fastapi")  # listed in requirements.txt: present wherever `make test` ran
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from fitgap.detect import Scoring, load_scoring  # noqa: E402
from fitgap.errors import InputError  # noqa: E402
from fitgap.serve import Limits, create_app, resolve_token  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "gif": "GIF"}


def encoded(fmt: str, h=72, w=88, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_noise(h, w, seed)).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    detector_ckpt(d / "best.pt", "resnet10t", 32, highpass=True)
    (d / "calibration.json").write_text(json.dumps(
        {"temperature": 1.3, "thresholds": {"fake": 0.52, "real": 0.48}, "targets": {"fpr": 0.01, "fnr": 0.05}}))
    imgs = d / "imgs"
    imgs.mkdir()
    for i, (ext, fmt) in enumerate(FORMATS.items()):
        (imgs / f"{i}.{ext}").write_bytes(encoded(fmt, seed=i))
    return d


@pytest.fixture(scope="module")
def scoring(detector):
    return load_scoring(str(detector / "best.pt"), None, None, None, "cpu")


def post(client, files, **params):
    return client.post("/v1/detect", params=params, files=[("files", (n, b, "application/octet-stream"))
                                                          for n, b in files])


def test_every_format_is_scored_as_detect_json_scores_it(detector, scoring, tmp_path):
    files = sorted((detector / "imgs").iterdir())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with TestClient(create_app(scoring)) as c:
        for crop in ("center", "tiles"):
            r = post(c, [(f.name, f.read_bytes()) for f in files], crop=crop)
            assert r.status_code == 200, r.text
            api = r.json()["results"]
            cmd = [sys.executable, "-m", "fitgap.detect", "--ckpt", str(detector / "best.pt"), *map(str, files),
                   "--json", "--device", "cpu", "--workers", "0", "--crop", crop]
            if crop == "tiles":
                cmd += ["--heatmap", str(tmp_path / "hm")]
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            cli = [json.loads(x) for x in p.stdout.splitlines()]
            assert len(api) == len(cli) == len(FORMATS)
            for a, b, f in zip(api, cli, files):
                assert a["path"] == f.name and a["error"] is None and a["calibrated"]
                assert a["file"]["format"] == FORMATS[f.suffix[1:]]
                b.pop("heatmap", None)
                assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
                assert a["verdict"] in ("real", "fake", "unsure") and set(a["consistency"]) == {
                    "bilinear x0.9", "bilinear x1.1", "jpeg q95"}
            if crop == "tiles":
                assert all(len(a["tiles"]) == len(a["tile_boxes"]) > 1 for a in api)
        r = post(c, [(files[0].name, files[0].read_bytes())], consistency="false")
        assert r.status_code == 200 and r.json()["results"][0]["consistency"] is None


def test_a_bad_file_fails_alone_and_an_all_bad_request_is_a_4xx(scoring):
    good = encoded("PNG")
    bad = {"corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200), "truncated.png": good[: len(good) // 2],
           "empty.jpg": b"", "text.jpg": b"just some text, not an image"}
    with TestClient(create_app(scoring)) as c:
        r = post(c, [("good.png", good), *bad.items()])
        assert r.status_code == 200
        recs = {x["path"]: x for x in r.json()["results"]}
        assert list(recs) == ["good.png", *bad]  # the order sent
        assert recs["good.png"]["error"] is None and recs["good.png"]["verdict"]
        for name in bad:
            assert recs[name]["error"] and recs[name]["verdict"] is None, name
        assert recs["empty.jpg"]["error"] == "empty file"
        assert "not a readable image" in recs["text.jpg"]["error"]
        r = post(c, [("text.jpg", bad["text.jpg"])])
        assert r.status_code == 415 and r.json()["results"][0]["error"]
        r = post(c, [("empty.jpg", b"")])
        assert r.status_code == 422
        # an upload name is shown back, never used as a path
        r = post(c, [("../../etc/passwd.png", good)])
        assert r.status_code == 200 and r.json()["results"][0]["path"] == "passwd.png"


def test_every_limit_is_a_clear_4xx(scoring, monkeypatch):
    lim = Limits(file_bytes=60_000, request_bytes=200_000, pixels=100 * 100, files=3, formats=("PNG", "JPEG"))
    png = encoded("PNG")  # 72 x 88 = 6336 pixels
    with TestClient(create_app(scoring, lim)) as c:
        big = encoded("PNG", 80, 400, seed=3)
        assert 60_000 < len(big) < 200_000
        r = post(c, [("big.png", big), ("ok.png", png)])
        recs = r.json()["results"]
        assert r.status_code == 200 and "too large" in recs[0]["error"] and recs[1]["error"] is None
        r = post(c, [("big.png", big)])
        assert r.status_code == 413 and "--max-file-bytes" in r.json()["results"][0]["error"]

        import fitgap.detect as det

        decoded = []
        real = det.decode_rgb
        monkeypatch.setattr(det, "decode_rgb", lambda src, *a, **k: decoded.append(len(src)) or real(src, *a, **k))
        wide = encoded("JPEG", 40, 400)  # 16,000 pixels > 10,000, few bytes
        r = post(c, [("wide.jpg", wide)])
        assert r.status_code == 413 and "too many pixels: 400x40" in r.json()["results"][0]["error"]
        assert decoded == []  # refused from the header, before any decoding
        monkeypatch.setattr(det, "decode_rgb", real)

        r = post(c, [("a.webp", encoded("WEBP"))])
        assert r.status_code == 415 and "format WEBP not accepted" in r.json()["results"][0]["error"]
        r = post(c, [(f"{i}.png", png) for i in range(4)])
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
        r = post(c, [(f"{i}.png", big) for i in range(3)])
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = c.post("/v1/detect", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = c.post("/v1/detect", data={"note": "no file"})  # a urlencoded form
        assert r.status_code == 415
        r = c.post("/v1/detect", files={"note": (None, "a text field, no file")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "no_files"
        r = post(c, [("ok.png", png)], crop="middle")
        assert r.status_code == 400 and "crop" in r.json()["error"]["message"]


@contextlib.contextmanager
def running(app):
    """The app under a real uvicorn server on a free loopback port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t0 = time.time()
    while not server.started:
        assert time.time() - t0 < 30, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()


def raw_request(port, head: bytes, body_chunks, pause=0.0):
    """Send a request by hand (to control what is sent when); returns (status line, bytes of the body
    that were sent before the server answered)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head)
    sent = 0
    s.setblocking(False)
    reply = b""
    for chunk in body_chunks:
        try:
            reply += s.recv(65536)
        except BlockingIOError:
            pass
        if reply:
            break
        try:
            s.sendall(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        time.sleep(pause)
    s.setblocking(True)
    s.settimeout(10)
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in reply:
            more = s.recv(65536)
            if not more:
                break
            reply += more
    s.close()
    return reply.split(b"\r\n", 1)[0].decode(), sent


def test_a_request_over_its_limit_is_refused_while_it_streams(scoring):
    lim = Limits(request_bytes=300_000)
    with running(create_app(scoring, lim)) as port:
        boundary = b"b0undary"
        # declared too large: answered from the headers, before any body byte is sent
        head = (b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary +
                b"\r\nContent-Length: 10000000000\r\n\r\n")
        status, sent = raw_request(port, head, [b"x" * 1000] * 50, pause=0.02)
        assert " 413 " in status and sent < 50_000
        # chunked, no length: refused once 300 kB have arrived, long before the 5 MB the client has
        head = (b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary +
                b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        data = b"%x\r\n%s\r\n" % (len(part), part)
        chunks = [data] + [b"%x\r\n%s\r\n" % (50_000, b"y" * 50_000)] * 100
        status, sent = raw_request(port, head, chunks, pause=0.02)
        assert " 413 " in status and sent < 1_500_000, (status, sent)


def test_the_token_guards_every_api_call_and_binding_beyond_loopback(scoring, monkeypatch, detector):
    with TestClient(create_app(scoring, token="s3cret-token")) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/").status_code == 200  # the page itself holds nothing; it asks for the token
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        r = post(c, [("a.png", encoded("PNG"))])
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        ok = c.get("/v1/model", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["token_required"] and ok.json()["crop_size"] == 32
        r = c.post("/v1/detect", headers={"Authorization": "Bearer s3cret-token"},
                   files=[("files", ("a.png", encoded("PNG"), "image/png"))])
        assert r.status_code == 200 and r.json()["results"][0]["verdict"]
    monkeypatch.delenv("FITGAP_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", None) is None and resolve_token("::1", None) is None
    with pytest.raises(InputError, match="needs --token"):
        resolve_token("0.0.0.0", None)
    with pytest.raises(InputError, match="8 characters"):
        resolve_token("0.0.0.0", "short")
    monkeypatch.setenv("FITGAP_TOKEN", "from-the-environment")
    assert resolve_token("0.0.0.0", None) == "from-the-environment"
    monkeypatch.delenv("FITGAP_TOKEN")
    p = subprocess.run([sys.executable, "-m", "fitgap.serve", "--ckpt", str(detector / "best.pt"), "--host",
                        "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "FITGAP_TOKEN"})
    assert p.returncode == 2 and "needs --token" in p.stderr


def gated(scoring):
    """The same detector behind a gate: each model call waits until the test opens it."""
    entered, gate = threading.Event(), threading.Event()

    def fn(crops):
        entered.set()
        assert gate.wait(60)
        return scoring.logits_fn(crops)

    return Scoring(fn, scoring.size, scoring.min_side, scoring.calibration, scoring.about), entered, gate


def test_past_the_queue_requests_get_503_and_the_accepted_ones_lose_nothing(scoring):
    slow, entered, gate = gated(scoring)
    app = create_app(slow, Limits(queue=1))
    files = [("a.png", encoded("PNG", seed=1)), ("b.jpg", encoded("JPEG", seed=2))]
    results = {}

    def send(name, n):
        with httpx.Client(timeout=60) as c:
            results[name] = c.post(f"http://127.0.0.1:{port}/v1/detect",
                                   files=[("files", f) for f in files[:n]])

    with running(app) as port:
        first = threading.Thread(target=send, args=("first", 2))
        first.start()
        assert entered.wait(30)  # the model is busy with the first request
        second = threading.Thread(target=send, args=("second", 1))
        second.start()
        t0 = time.time()
        while app.state.worker.jobs.qsize() < 1:  # the second waits in the queue (size 1)
            assert time.time() - t0 < 30
            time.sleep(0.01)
        for k in range(3):
            send(f"extra{k}", 1)
            r = results[f"extra{k}"]
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "busy"
        gate.set()
        first.join(60)
        second.join(60)
    assert results["first"].status_code == 200 and results["second"].status_code == 200
    assert [x["path"] for x in results["first"].json()["results"]] == ["a.png", "b.jpg"]
    assert all(x["error"] is None and x["verdict"] for k in ("first", "second") for x in results[k].json()["results"])


def test_a_request_past_its_time_limit_gets_504_and_the_next_is_served(scoring):
    slow, entered, gate = gated(scoring)
    with TestClient(create_app(slow, Limits(timeout_s=0.5))) as c:
        r = post(c, [("a.png", encoded("PNG"))])
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        gate.set()
        r = post(c, [("a.png", encoded("PNG"))])
        assert r.status_code == 200 and r.json()["results"][0]["verdict"]


def test_model_describes_the_detector_and_its_limits(detector, scoring):
    with TestClient(create_app(scoring, Limits(files=5))) as c:
        m = c.get("/v1/model").json()
    assert m["detector"].endswith("best.pt") and m["encoder"]["backbone"] == "resnet10t"
    assert m["calibration"]["temperature"] == 1.3 and m["limits"]["files"] == 5 and m["token_required"] is False
    with pytest.raises(InputError, match="--max-files"):
        create_app(scoring, Limits(files=0))
    with pytest.raises(InputError, match="--formats"):
        create_app(scoring, Limits(formats=("JPEG", "HEIC")))
    uncal = load_scoring(str(detector / "best.pt"), None, "none", None, "cpu")
    with TestClient(create_app(uncal)) as c:
        rec = post(c, [("a.png", encoded("PNG"))]).json()["results"][0]
    assert rec["calibrated"] is False and rec["p_calibrated"] is None and rec["reasons"][0].startswith("uncalibrated")
