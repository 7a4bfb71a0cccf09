"""The app factory: settings -> a FastAPI app with the API (routes.py), the live streams (live.py),
the page (static/) and the error shape every client sees: {"detail": "one line"}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from stream.errors import FacestreamError
from stream.web.auth import Auth
from stream.web.engine import Engine, one_line
from stream.web.live import Live

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from stream.faces import FaceAnalyzer
    from stream.pipeline.config import PipelineConfig

STATIC = Path(__file__).parent / "static"
MAX_PHOTOS = 10  # per enrollment request


@dataclass
class Settings:
    host: str
    token: str
    gallery: Path | None
    model: str
    threshold: float | None = None
    home: Path | None = None
    max_upload_bytes: int = 10 * 2**20
    cfg: PipelineConfig | None = None  # with a pipeline: where its results and preview come from
    results: str | None = None
    preview: str | None = None


class BodyLimit:
    """Refuses a request whose declared body exceeds the limit before anything reads it (413);
    uploads.read_image checks each file's real size as well."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                response = JSONResponse(
                    {"detail": f"request larger than {self.limit / 2**20:.0f} MB"}, status_code=413
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(s: Settings, analyzer: FaceAnalyzer | None = None) -> FastAPI:
    from stream.web import routes

    engine = Engine(s.gallery, s.model, s.threshold, s.home, analyzer)
    live = Live(s.cfg, s.results, s.preview)
    auth = Auth.for_host(s.host, s.token)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await live.start()
        try:
            yield
        finally:
            live.stop()
            engine.close()

    app = FastAPI(
        title="facestream",
        summary="Face recognition on live video: identify, verify, the gallery, live events.",
        version="1",
        lifespan=lifespan,
    )
    app.state.engine, app.state.live, app.state.auth, app.state.settings = engine, live, auth, s

    @app.exception_handler(FacestreamError)
    async def _facestream_error(_request: Request, e: FacestreamError) -> JSONResponse:
        return JSONResponse({"detail": one_line(e)}, status_code=400)

    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Several photos per enrollment, plus the multipart framing.
    app.add_middleware(BodyLimit, limit=MAX_PHOTOS * s.max_upload_bytes + 2**20)
    return app
