"""`fitgap serve`: a web page and an HTTP API for the detector, on this machine, safe by default.

    fitgap serve --ckpt runs/finetune/best.pt [--calibration calibration.json] [--port 8000]

GET /            the page: drop or pick images; each gets its verdict, calibrated P(fake), the
                 reasons and, with tiles, the tile scores over the image (no build step, no CDN)
POST /v1/detect  multipart/form-data, one or more files (any field name); ?crop=center|tiles,
                 ?consistency=true|false. JSON {"results": [one record per file, as
                 `fitgap detect --json` writes it], "model": ...}
GET /v1/model    the detector, its encoder, crop size, calibration, version and the limits
GET /healthz     {"status": "ok"} (no token needed: it tells nothing about the model)
GET /docs        the OpenAPI documentation FastAPI generates

Safe by default: it binds 127.0.0.1; any other address needs --token (or FITGAP_TOKEN), and with a
token every /v1 call needs `Authorization: Bearer <token>` (compared in constant time). Request bodies
are read as a stream and refused as soon as they pass a limit; uploads stay in memory (never written to
disk, their names never used as paths); the pixel count is read from the header before anything is
decoded; formats are recognised by content. The model scores batches from a bounded queue: past it a
request gets 503 with Retry-After; each request has a time limit; a bad file fails alone, with its
reason in its record.
"""

import argparse
import asyncio
import contextlib
import hmac
import io
import ipaddress
import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError

TOKEN_ENV = "FITGAP_TOKEN"
MiB = 1 << 20
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


@dataclass
class Limits:
    """What one request may send, and how much work the server takes on at once."""
    file_bytes: int = 20 * MiB
    request_bytes: int = 64 * MiB
    pixels: int = 40_000_000
    files: int = 16
    queue: int = 8  # requests waiting for the model; more get 503
    timeout_s: float = 120.0  # per request, from its last byte received to its answer
    formats: Tuple[str, ...] = FORMATS

    def check(self) -> None:
        for name in ("file_bytes", "request_bytes", "pixels", "files", "queue"):
            if getattr(self, name) < 1:
                raise InputError(f"--max-{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise InputError(f"--timeout: must be > 0 s, got {self.timeout_s}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise InputError(f"--formats: {', '.join(unknown) or 'none given'}; choose from {', '.join(FORMATS)}")


class RequestError(Exception):
    """A request refused as a whole: HTTP status, a short code, a message for a person."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Upload:
    name: str
    data: bytearray = field(default_factory=bytearray)
    error: Optional[str] = None  # set when the part passed the per-file limit (its bytes are dropped)
    status: int = 200


class UploadParser:
    """multipart/form-data read chunk by chunk (python-multipart's streaming parser), every limit
    checked as the bytes arrive: a request over its byte limit is refused without reading the rest; a
    file over its limit is dropped (its record says why) while the others are kept."""

    def __init__(self, content_type: str, limits: Limits):
        from python_multipart.multipart import MultipartParser, parse_options_header

        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise RequestError(415, "unsupported_media_type",
                               f"send the images as multipart/form-data (got {content_type or 'no content type'!r})")
        self.limits = limits
        self.uploads: List[Upload] = []
        self.received = 0
        self._headers: Dict[bytes, bytes] = {}
        self._field = b""
        self._current: Optional[Upload] = None
        self._skip = False
        self.parser = MultipartParser(params[b"boundary"], callbacks={
            "on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end})
        self._value = b""

    def _begin(self):
        self._headers, self._current, self._skip, self._field, self._value = {}, None, False, b"", b""

    def _hfield(self, data, start, end):
        self._field += data[start:end]

    def _hvalue(self, data, start, end):
        self._value += data[start:end]

    def _hend(self):
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self):
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" not in params:  # a plain form field: not an image, ignored
            self._skip = True
            return
        if len(self.uploads) >= self.limits.files:
            raise RequestError(413, "too_many_files", f"more than {self.limits.files} files in one request "
                               "(--max-files)")
        raw = params[b"filename"].decode("utf-8", "replace")
        name = os.path.basename(raw.replace("\\", "/")) or "upload"  # shown back to the client, never a path
        self._current = Upload(name=name)
        self.uploads.append(self._current)

    def _data(self, data, start, end):
        u = self._current
        if self._skip or u is None or u.error:
            return
        if len(u.data) + (end - start) > self.limits.file_bytes:
            u.error, u.status, u.data = (f"too large: more than {self.limits.file_bytes} bytes (--max-file-bytes)",
                                         413, bytearray())
            return
        u.data += data[start:end]

    def _end(self):
        self._current = None

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.request_bytes:
            raise RequestError(413, "request_too_large",
                               f"request body over {self.limits.request_bytes} bytes (--max-request-bytes)")
        try:
            self.parser.write(chunk)
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
            raise RequestError(400, "bad_multipart", f"the multipart body cannot be parsed: {exc}") from None


def check_image(data: bytes, limits: Limits) -> Tuple[Optional[str], int]:
    """(error, HTTP status) of one upload from its header alone: empty, not an image, a format not
    accepted (by content, not by name), or more pixels than allowed; (None, 200) when it may be decoded."""
    import warnings

    from PIL import Image

    if not data:
        return "empty file", 422
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        return f"too many pixels (over Pillow's decompression-bomb limit; --max-pixels {limits.pixels})", 413
    except Exception as exc:  # noqa: BLE001 - anything Pillow cannot identify
        return f"not a readable image ({type(exc).__name__})", 415
    if fmt not in limits.formats:
        return f"format {fmt} not accepted (accepted: {', '.join(limits.formats)})", 415
    if w * h > limits.pixels:
        return f"too many pixels: {w}x{h} = {w * h} > {limits.pixels} (--max-pixels)", 413
    return None, 200


class ModelWorker:
    """One thread owns the model and scores the jobs of a bounded queue, several requests' files per
    model call when they wait together. submit() refuses at once when the queue is full."""

    def __init__(self, scoring, limits: Limits, batch_files: int = 16):
        self.scoring, self.batch_files = scoring, batch_files
        self.jobs: "queue.Queue[Tuple[list, bool, Future]]" = queue.Queue(maxsize=limits.queue)
        self.thread = threading.Thread(target=self._run, name="fitgap-model", daemon=True)
        self.thread.start()

    def submit(self, items: list, per_tile: bool) -> Future:
        fut: Future = Future()
        try:
            self.jobs.put_nowait((items, per_tile, fut))
        except queue.Full:
            raise RequestError(503, "busy", "the model's queue is full: retry shortly",
                               {"Retry-After": "2"}) from None
        return fut

    def _run(self):
        from .detect import score_batch

        held = None  # a job taken while batching that could not join (tiles and centre crops apart)
        while True:
            job = held if held is not None else self.jobs.get()
            held = None
            if job is None:
                return
            group = [job] if job[2].set_running_or_notify_cancel() else []  # cancelled: its request timed out
            while group and sum(len(j[0]) for j in group) < self.batch_files:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt[1] != group[0][1]:
                    held = nxt
                    break
                if nxt[2].set_running_or_notify_cancel():
                    group.append(nxt)
            if not group:
                continue
            items = [it for j in group for it in j[0]]
            try:  # one model call for every waiting request's files
                scored, tiles = score_batch(self.scoring.logits_fn, items, per_tile=group[0][1])
            except BaseException as exc:  # noqa: BLE001 - handed to the requests that own the jobs
                for j in group:
                    j[2].set_exception(exc)
                continue
            at = 0
            for j in group:
                n = len(j[0])
                j[2].set_result((scored[at:at + n], tiles[at:at + n]))
                at += n

    def close(self):
        self.jobs.put(None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_info(scoring, limits: Limits) -> Dict[str, Any]:
    from . import __version__

    cal = scoring.calibration
    return {**scoring.about, "crop_size": scoring.size, "fitgap": __version__,
            "calibration": None if cal is None else {k: cal.get(k) for k in
                                                     ("temperature", "thresholds", "targets", "reached", "fitted_on",
                                                      "counts", "path") if k in cal},
            "limits": {**asdict(limits), "formats": list(limits.formats)}}


def create_app(scoring, limits: Optional[Limits] = None, token: Optional[str] = None):
    """The FastAPI application (the page, /v1/detect, /v1/model, /healthz) around a loaded Scoring."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .detect import make_record, prepare

    limits = limits or Limits()
    limits.check()
    worker = ModelWorker(scoring, limits)
    info = model_info(scoring, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.close()

    app = FastAPI(title="fitgap", version=info["fitgap"], lifespan=lifespan,
                  description="AI-generated image detection from rescaling traces. POST images to /v1/detect.")
    app.state.worker = worker

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status,
                            headers=exc.headers)

    def authorize(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise RequestError(401, "unauthorized", "this server needs its token: Authorization: Bearer <token>",
                               {"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(WEB_DIR, "index.html"), media_type="text/html")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/v1/model")
    def model(request: Request):
        try:
            authorize(request)
        except RequestError as exc:
            return error(exc)
        return {**info, "token_required": token is not None}

    @app.post("/v1/detect")
    async def detect(request: Request, crop: str = "center", consistency: bool = True):
        """Score the uploaded images: one record per file, in the order sent."""
        try:
            authorize(request)
            if crop not in ("center", "tiles"):
                raise RequestError(400, "bad_argument", f"crop must be center or tiles, got {crop!r}")
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.request_bytes:
                raise RequestError(413, "request_too_large", f"request body of {declared} bytes is over "
                                   f"{limits.request_bytes} (--max-request-bytes)")
            parser = UploadParser(request.headers.get("content-type", ""), limits)
            async for chunk in request.stream():
                parser.feed(chunk)
            if not parser.uploads:
                raise RequestError(422, "no_files", "no file in the request (send multipart files)")
            results = await asyncio.wait_for(
                score_uploads(parser.uploads, crop == "tiles", consistency), limits.timeout_s)
        except RequestError as exc:
            return error(exc)
        except asyncio.TimeoutError:
            return error(RequestError(504, "timeout", f"not scored within {limits.timeout_s:g} s (--timeout)"))
        statuses = [s for _, s in results]
        records = [r for r, _ in results]
        ok = any(s == 200 for s in statuses)
        status = 200 if ok else max(set(statuses), key=statuses.count)
        return JSONResponse({"results": records, "model": {"detector": info["detector"],
                                                           "calibrated": scoring.calibration is not None}},
                            status_code=status)

    async def score_uploads(uploads: List[Upload], per_tile: bool, consistency: bool):
        checks = [(u.error, u.status) if u.error else check_image(bytes(u.data), limits) for u in uploads]

        def prep(u: Upload):
            return prepare(u.name, bytes(u.data), scoring.size, "tiles" if per_tile else "center",
                           scoring.min_side, consistency)

        todo = [u for u, (err, _) in zip(uploads, checks) if err is None]
        items = await run_in_threadpool(lambda: [prep(u) for u in todo])
        fut = worker.submit(items, per_tile) if items else None
        try:
            scored, tile_logits = await asyncio.wrap_future(fut) if fut else ([], [])
        except asyncio.CancelledError:
            if fut:
                fut.cancel()
            raise
        it = iter(zip(items, scored, tile_logits))
        out = []
        for u, (err, status) in zip(uploads, checks):
            if err is not None:
                out.append((make_record((u.name, None, err, facts_or_none(u), None), None, None,
                                        scoring.calibration, scoring.size), status))
                continue
            item, logits, tiles = next(it)
            rec = make_record(item, logits, tiles if per_tile else None, scoring.calibration, scoring.size)
            out.append((rec, 200 if rec["error"] is None else 422))
        return out

    def facts_or_none(u: Upload) -> Dict[str, Any]:
        from .detect import file_facts

        return file_facts(bytes(u.data)) if u.data else {"format": None, "width": None, "height": None,
                                                         "jpeg_quality": None, "exif": None}

    return app


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a detector checkpoint (finetune.py's best.pt)")
    p.add_argument("--onnx", default=None, help="an exported detector (python -m fitgap.export) instead of --ckpt")
    p.add_argument("--calibration", default=None,
                   help="calibration.json (default: the one beside the detector, if any; 'none': uncalibrated)")
    p.add_argument("--size", type=int, default=None, help="crop size in px (default: the detector's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other address needs --token)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--token", default=None,
                   help=f"bearer token every /v1 call must send (default: ${TOKEN_ENV}, else none on loopback)")
    d = Limits()
    p.add_argument("--max-file-bytes", type=int, default=d.file_bytes, help=f"bytes per file (default {d.file_bytes})")
    p.add_argument("--max-request-bytes", type=int, default=d.request_bytes,
                   help=f"bytes per request (default {d.request_bytes})")
    p.add_argument("--max-pixels", type=int, default=d.pixels,
                   help=f"pixels per image, read from the header before decoding (default {d.pixels})")
    p.add_argument("--max-files", type=int, default=d.files, help=f"files per request (default {d.files})")
    p.add_argument("--queue", type=int, default=d.queue,
                   help=f"requests waiting for the model before 503 (default {d.queue})")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help=f"seconds per request (default {d.timeout_s:g})")
    p.add_argument("--formats", nargs="+", default=list(d.formats),
                   help=f"accepted formats, recognised by content (default {' '.join(d.formats)})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    return p


def limits_from_args(args) -> Limits:
    lim = Limits(file_bytes=args.max_file_bytes, request_bytes=args.max_request_bytes, pixels=args.max_pixels,
                 files=args.max_files, queue=args.queue, timeout_s=args.timeout,
                 formats=tuple(f.upper() for f in args.formats))
    lim.check()
    return lim


def resolve_token(host: str, token: Optional[str]) -> Optional[str]:
    """The token in force; binding beyond loopback without one is refused."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 8:
        raise InputError("--token: use at least 8 characters")
    if not is_loopback(host) and token is None:
        raise InputError(f"--host {host}: binding beyond this machine needs --token (or ${TOKEN_ENV}); "
                         "every API call will then need it")
    return token


def main(args) -> int:
    import uvicorn

    from .detect import load_scoring

    if not 0 < args.port < 65536:
        raise InputError(f"--port: {args.port} is not a TCP port")
    token = resolve_token(args.host, args.token)
    limits = limits_from_args(args)
    scoring = load_scoring(args.ckpt, args.onnx, args.calibration, args.size, args.device)
    app = create_app(scoring, limits, token)
    print(f"fitgap serve: http://{args.host}:{args.port}/ ({scoring.about['detector']}; "
          f"{'calibrated' if scoring.calibration else 'uncalibrated'}; token {'required' if token else 'off'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                limit_concurrency=limits.queue * 4 + 8, timeout_keep_alive=5)
    return 0


def cli(argv=None) -> None:
    from .cli import run_main

    run_main(main, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
