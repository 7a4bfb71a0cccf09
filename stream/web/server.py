"""Running the app under uvicorn: alone (`facestream serve`, in the foreground) or in a thread of the
supervised dashboard stage (stream/pipeline/stages/dashboard.py)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import FacestreamError
from stream.web.auth import parse_listen, resolve_token

if TYPE_CHECKING:
    import uvicorn

    from stream.pipeline.config import PipelineConfig
    from stream.web.app import Settings

log = logging.getLogger(__name__)


def announce_token(token: str, generated: bool, host: str, port: int) -> None:
    """Printed once, when generated: the only place a generated token is shown."""
    shown = f"[{host}]" if ":" in host else host
    print(f"dashboard: http://{shown}:{port}/  (API docs: /docs)", file=sys.stderr, flush=True)
    if generated:
        print(
            f"dashboard token (needed to change the gallery; printed once): {token}",
            file=sys.stderr,
            flush=True,
        )


def pipeline_settings(cfg: PipelineConfig) -> Settings:
    """The dashboard of a running pipeline: its gallery and model, its results PUB and preview."""
    from stream.pipeline.roles import PREVIEW, RESULTS
    from stream.web.app import Settings

    d = cfg.dashboard
    if d is None:
        raise FacestreamError("the config has no dashboard section")
    host, port = parse_listen(d.listen)
    run_dir = Path(cfg.transport.run_dir) if cfg.transport.run_dir is not None else None
    token, generated = resolve_token(d.token, run_dir)
    announce_token(token, generated, host, port)
    return Settings(
        host=host,
        token=token,
        gallery=cfg.gallery,
        model=cfg.model,
        threshold=cfg.match.threshold,
        home=cfg.home,
        max_upload_bytes=int(d.max_upload_mb * 2**20),
        cfg=cfg,
        results=cfg.endpoint(RESULTS),
        preview=cfg.endpoint(PREVIEW) if run_dir is not None else None,
    )


def uvicorn_server(settings: Settings, port: int) -> uvicorn.Server:
    import uvicorn

    from stream.web.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class ThreadedServer:
    """uvicorn in a thread (it installs no signal handlers there): the stage's own loop owns the
    process's signals and stops it."""

    def __init__(self, settings: Settings, port: int):
        self.server = uvicorn_server(settings, port)
        self.thread = threading.Thread(target=self.server.run, name="facestream-web", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise FacestreamError(
                    f"dashboard could not listen on {self.server.config.host}:{self.server.config.port}"
                )
            if time.monotonic() > deadline:
                raise FacestreamError(f"dashboard did not start within {timeout_s:.0f}s")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
