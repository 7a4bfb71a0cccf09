"""Dashboard: the web app (stream/web/) as one more supervised process of the pipeline, so that it
starts, restarts and stops with the run (`facestream run --dashboard HOST:PORT`). It reads only the
results PUB and the sink's preview: a slow or dead dashboard never slows the pipeline."""

from __future__ import annotations

from stream.errors import FacestreamError
from stream.pipeline.roles import Role
from stream.pipeline.stages.base import Stage
from stream.web.auth import parse_listen


class DashboardStage(Stage):
    role = Role.DASHBOARD

    def open(self) -> None:
        from stream.web.server import ThreadedServer, pipeline_settings

        if self.cfg.dashboard is None:
            raise FacestreamError("no dashboard in the config (dashboard.listen)")
        _, port = parse_listen(self.cfg.dashboard.listen)
        self.server = ThreadedServer(pipeline_settings(self.cfg), port)
        self.server.start()

    def ready_line(self) -> str:
        return f"dashboard ready on {self.cfg.dashboard.listen if self.cfg.dashboard else '?'}"

    def step(self) -> None:
        self.server.thread.join(0.2)
        if not self.server.alive:
            raise RuntimeError("the web server stopped by itself")  # the supervisor restarts us

    def close(self) -> None:
        if hasattr(self, "server"):
            self.server.stop()
