"""The HTTP routes: probes, the page, identify/verify, the people, the live streams, login."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from stream.web.auth import COOKIE, Auth
from stream.web.engine import Engine
from stream.web.live import Hub, Live
from stream.web.uploads import read_image

router = APIRouter()
KEEPALIVE_S = 15.0


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _live(request: Request) -> Live:
    live: Live = request.app.state.live
    return live


def _limit(request: Request) -> int:
    return int(request.app.state.settings.max_upload_bytes)


async def may_read(request: Request) -> None:
    auth: Auth = request.app.state.auth
    auth.check(request, write=False)


async def may_write(request: Request) -> None:
    auth: Auth = request.app.state.auth
    auth.check(request, write=True)


Reader = Depends(may_read)
Writer = Depends(may_write)


# ----- probes and the page ------------------------------------------------------------------------------
@router.get("/healthz", tags=["probes"])
async def healthz() -> dict[str, str]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["probes"])
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the models are built, the gallery (if any) opens, and with a pipeline the
    results stream is connected. 503 with the reason otherwise."""
    from stream.gallery.store import Gallery
    from stream.modelstore import require_model

    engine, live = _engine(request), _live(request)
    try:
        require_model("mtcnn", engine.home)
        require_model(engine.model, engine.home)
        gallery = engine.gallery
        if gallery is not None and gallery.exists():
            # Not on the engine's thread: a probe must not wait behind a model call.
            await asyncio.to_thread(lambda: Gallery.open(gallery).close())
    except Exception as e:  # noqa: BLE001 - any reason is a reason not to be ready
        return JSONResponse({"status": "not ready", "reason": " ".join(str(e).split())}, status_code=503)
    if live.results is not None and not live.connected:
        return JSONResponse({"status": "not ready", "reason": "results stream not connected"}, 503)
    return JSONResponse({"status": "ready"})


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    from stream.web.app import STATIC

    return FileResponse(STATIC / "index.html")


class Login(BaseModel):
    token: str


@router.post("/api/login", tags=["auth"])
async def login(body: Login, request: Request, response: Response) -> dict[str, bool]:
    """The page's login: the token in an HttpOnly, SameSite=Strict cookie."""
    auth: Auth = request.app.state.auth
    if not auth.valid(body.token):
        raise HTTPException(401, "wrong token")
    response.set_cookie(
        COOKIE, body.token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return {"ok": True}


@router.get("/api/whoami", tags=["auth"], dependencies=[Reader])
async def whoami(request: Request) -> dict[str, bool]:
    """Whether this client holds the token (the page shows the login where it does not)."""
    auth: Auth = request.app.state.auth
    return {"token": auth.valid(auth.presented(request)), "reads_need_token": auth.reads_need_token}


# ----- identify / verify ----------------------------------------------------------------------------------
@router.post("/api/identify", tags=["faces"], dependencies=[Reader])
async def identify(request: Request, image: Annotated[UploadFile, File()]) -> Any:
    """The faces in a photo, named from the gallery: the same JSON as `facestream identify --json`."""
    engine = _engine(request)
    _, _, frame = await read_image(image, _limit(request))
    return await engine.call(engine.identify, frame)


@router.post("/api/verify", tags=["faces"], dependencies=[Reader])
async def verify(
    request: Request,
    image1: Annotated[UploadFile, File()],
    image2: Annotated[UploadFile, File()],
    largest: Annotated[bool, Form()] = False,
) -> Any:
    """Are two photos the same person? The same JSON as `facestream verify --json`."""
    engine = _engine(request)
    n1, _, f1 = await read_image(image1, _limit(request), 1)
    n2, _, f2 = await read_image(image2, _limit(request), 2)
    return await engine.call(engine.verify, [f1, f2], (n1, n2), largest)


# ----- people -------------------------------------------------------------------------------------------------
@router.get("/api/people", tags=["people"], dependencies=[Reader])
async def people(request: Request) -> Any:
    engine = _engine(request)
    return await engine.call(engine.people)


@router.get("/api/people/{name}/thumbnail", tags=["people"], dependencies=[Reader])
async def thumbnail(request: Request, name: str) -> Response:
    engine = _engine(request)
    return Response(await engine.call(engine.thumbnail, name), media_type="image/jpeg")


@router.post("/api/people", tags=["people"], dependencies=[Writer], status_code=201)
async def enroll(
    request: Request,
    name: Annotated[str, Form()],
    photos: Annotated[list[UploadFile], File()],
    largest: Annotated[bool, Form()] = False,
) -> Any:
    """Enroll a person from one or more photos (all are checked first; one unfit photo refuses the
    request and nothing is stored)."""
    from stream.gallery.store import validate_name
    from stream.web.app import MAX_PHOTOS

    validate_name(name)  # cheap checks before any photo is read
    if len(photos) > MAX_PHOTOS:
        raise HTTPException(413, f"at most {MAX_PHOTOS} photos per request")
    checked = [await read_image(p, _limit(request), i) for i, p in enumerate(photos)]
    engine = _engine(request)
    outcomes = await engine.call(engine.enroll, name, [(n, data) for n, data, _ in checked], largest)
    return {"name": name, "photos": outcomes}


class Rename(BaseModel):
    name: str


@router.patch("/api/people/{name}", tags=["people"], dependencies=[Writer])
async def rename(request: Request, name: str, body: Rename) -> dict[str, str]:
    engine = _engine(request)
    await engine.call(engine.rename, name, body.name)
    return {"renamed": name, "name": body.name}


@router.delete("/api/people/{name}", tags=["people"], dependencies=[Writer])
async def remove(request: Request, name: str) -> dict[str, Any]:
    engine = _engine(request)
    return {"removed": name, "samples": await engine.call(engine.remove, name)}


# ----- live -----------------------------------------------------------------------------------------------------
async def _stream(request: Request, hub: Hub, first: list[str]) -> AsyncIterator[str]:
    q = hub.subscribe()
    try:
        for text in first:
            yield text
        while not await request.is_disconnected():
            try:
                yield await asyncio.wait_for(q.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"
    finally:
        hub.unsubscribe(q)


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/api/events", tags=["live"], dependencies=[Reader])
async def events(request: Request) -> StreamingResponse:
    """Server-Sent Events: `event` (track_confirmed, track_left, unknown_persists, camera up/down and
    end; the last ones first), and `stats` each second (per camera: up, fps, drops, p50/p95 ms)."""
    live = _live(request)
    first = [f"event: event\ndata: {json.dumps(e)}\n\n" for e in live.recent]
    first.append(f"event: stats\ndata: {json.dumps(live.stats())}\n\n")
    return _sse(_stream(request, live.events, first))


@router.get("/api/live", tags=["live"], dependencies=[Reader])
async def live_frames(request: Request) -> StreamingResponse:
    """Server-Sent Events `frame`: each camera's latest picture (base64 JPEG, downscaled) with its
    faces (boxes in the original frame's pixels, names, tracks). Pictures are made only while someone
    is connected here."""
    return _sse(_stream(request, _live(request).frames, []))
