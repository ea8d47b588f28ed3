"""The annotation app's routes (Starlette). Run by ``samtriton annotate``; see ``create_app``.

Reads only the served images (by name, from the catalog) and writes only under ``--out``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from samtriton.errors import InvalidInput, ModelNotReady, SamTritonError, ServerUnavailable

from . import label_studio, prompts
from .access import TokenGate, access_token
from .annotator import Annotator, UnknownPrediction, runs
from .catalog import Catalog, UnknownImage
from .store import Store, summary

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20  # prompts are small; nothing legitimate comes near this
log = logging.getLogger("samtriton.tools.annotate")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_json(request: Request) -> dict:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise HTTPError(413, f"body: expected at most {MAX_BODY} bytes of JSON")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPError(413, f"body: expected at most {MAX_BODY} bytes of JSON")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body: expected a JSON object ({exc})") from None
    return prompts.require_object(body)


def error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, HTTPError):
        status = exc.status
    elif isinstance(exc, (UnknownImage, UnknownPrediction)):
        status = 404
    elif isinstance(exc, (ValueError, InvalidInput)):  # InvalidInput is a ValueError too
        status = 400
    elif isinstance(exc, (ServerUnavailable, ModelNotReady)):
        status = 503
    elif isinstance(exc, SamTritonError):
        status = 502
    else:
        raise exc
    return JSONResponse({"error": str(exc)}, status_code=status)


def _handler(fn):
    async def endpoint(request: Request):
        try:
            return await fn(request)
        except Exception as exc:  # noqa: BLE001 - error_response re-raises what it does not know
            return error_response(exc)

    return endpoint


def create_app(
    catalog: Catalog,
    store: Store,
    annotator: Annotator,
    model: str = "",
    label_studio_source: "label_studio.ImageSource | None" = None,
    token: "str | None" = None,
) -> Starlette:
    """The app's routes; ``token``: the access token every request must show (None: open,
    for an app on loopback)."""

    def loader(name):
        path = catalog.path(name)
        return lambda: path.read_bytes()

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def images(request):
        return JSONResponse({"images": catalog.describe(), "out": str(store.out), "model": model})

    async def image_file(request):
        return FileResponse(catalog.path(request.path_params["name"]))

    async def predict(request):
        received = time.perf_counter()
        body = await read_json(request)
        name = body.get("image")
        size = catalog.size(name)
        points, labels = prompts.parse_points(body.get("points"), size)
        box = prompts.parse_box(body.get("box"), size)
        if points is None and box is None:
            raise ValueError("points, box: expected at least one point or a box")
        refine = prompts.parse_choice(body.get("refine"), "refine")
        result = await run_in_threadpool(annotator.predict, name, loader(name), points, labels, box, refine)
        result["masks"] = [runs(m) for m in annotator.masks(result["id"])]
        result["server_ms"] = round((time.perf_counter() - received) * 1000, 2)
        log.info(
            "click image=%s points=%d box=%s set_image_ms=%.1f predict_ms=%.1f server_ms=%.1f",
            name,
            0 if points is None else len(points),
            box is not None,
            result["set_image_ms"],
            result["predict_ms"],
            result["server_ms"],
        )
        return JSONResponse(result)

    async def prepare(request):
        # The page calls this when it shows an image, so the first click does not pay for set_image.
        body = await read_json(request)
        name = body.get("image")
        catalog.path(name)
        seconds = await run_in_threadpool(annotator.prepare, name, loader(name))
        log.info("image set image=%s set_image_ms=%.1f", name, seconds * 1000)
        return JSONResponse({"image": name, "set_image_ms": round(seconds * 1000, 2)})

    async def automatic(request):
        body = await read_json(request)
        name = body.get("image")
        catalog.path(name)
        rgb = await run_in_threadpool(annotator.rgb, name, catalog.path(name))
        result = await run_in_threadpool(annotator.automatic, name, loader(name), rgb)
        result["masks"] = [runs(m) for m in annotator.masks(result["id"])]
        return JSONResponse(result)

    def _objects(name):
        listed = summary(store.objects(name))
        for obj in listed:
            obj["runs"] = runs(store.mask(name, obj))
        return listed

    async def objects(request):
        name = request.query_params.get("image")
        catalog.path(name)
        return JSONResponse({"image": name, "objects": await run_in_threadpool(_objects, name)})

    async def accept(request):
        body = await read_json(request)
        name = body.get("image")
        size = catalog.size(name)
        choice = prompts.parse_choice(body.get("mask"), "mask")
        if choice is None:
            raise ValueError('mask: expected {"id": prediction id, "index": candidate}')
        found = annotator.get(*choice)
        if found["image"] != name:
            raise ValueError(f"mask: prediction {choice[0]!r} is of another image than {name!r}")
        rgb = await run_in_threadpool(annotator.rgb, name, catalog.path(name))
        obj = await run_in_threadpool(
            store.add,
            name,
            size,
            body.get("label"),
            found["mask"],
            rgb,
            found["score"],
            {"prediction": choice[0], "index": choice[1]},
        )
        log.info("accepted image=%s object=%d label=%r area=%d", name, obj["id"], obj["label"], obj["area"])
        return JSONResponse({"object": summary([obj])[0]}, status_code=201)

    async def delete(request):
        name = request.query_params.get("image")
        size = catalog.size(name)
        ident = request.query_params.get("id", "")
        if not ident.isdigit():
            raise ValueError(f"id: expected an object number, got {ident!r}")
        if not await run_in_threadpool(store.delete, name, int(ident), size):
            raise HTTPError(404, f"id: image {name!r} has no object {ident}")
        return JSONResponse({"deleted": int(ident)})

    async def export(request):
        path = await run_in_threadpool(store.export_coco, catalog)
        document = json.loads(path.read_text())
        return JSONResponse(
            {"coco": str(path), "images": len(document["images"]), "annotations": len(document["annotations"])}
        )

    routes = [
        Route("/", _handler(index)),
        Route("/api/images", _handler(images)),
        Route("/images/{name:path}", _handler(image_file)),
        Route("/api/predict", _handler(predict), methods=["POST"]),
        Route("/api/prepare", _handler(prepare), methods=["POST"]),
        Route("/api/automatic", _handler(automatic), methods=["POST"]),
        Route("/api/objects", _handler(objects), methods=["GET"]),
        Route("/api/objects", _handler(accept), methods=["POST"]),
        Route("/api/objects", _handler(delete), methods=["DELETE"]),
        Route("/api/export", _handler(export), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    routes += [
        Route(path, _handler(fn), methods=methods)
        for path, fn, methods in label_studio.routes(annotator, catalog, label_studio_source, read_json)
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)] if token else [])


def serve(
    images,
    url: str,
    model: str,
    out: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    timeout: float = 60.0,
    label_studio_url: str = "",
    label_studio_token: str = "",
    amg_options: "dict | None" = None,
    token_file: "str | None" = None,
) -> int:
    """Run the app until interrupted (``samtriton annotate``). Beyond loopback every request
    needs the access token (``token_file``, ``$SAMTRITON_ANNOTATE_TOKEN``, else generated and
    printed); ``ValueError`` for an unusable one."""
    import uvicorn

    from samtriton.predictor import SamPredictor

    token, origin = access_token(host, token_file)
    catalog = Catalog(images)
    store = Store(Path(out))
    predictor = SamPredictor(url, model=model, timeout=timeout)
    annotator = Annotator(predictor, amg_options)
    source = label_studio.ImageSource(catalog, label_studio_url, label_studio_token)
    app = create_app(catalog, store, annotator, model=model, label_studio_source=source, token=token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(
        f"samtriton annotate: {len(catalog.names)} images, objects saved to {store.out}; "
        f"open http://{host}:{port}/ (Label Studio ML backend at the same URL)",
        flush=True,
    )
    if token is not None:
        shown = token if origin.startswith("generated") else "(given)"
        print(
            f"access token ({origin}): every request needs it, as HTTP Basic password (any user name) or "
            f"Bearer token: {shown}",
            flush=True,
        )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        predictor.close()
    return 0
