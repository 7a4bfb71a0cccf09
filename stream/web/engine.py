"""The models and the gallery behind the API, on one worker thread: ONNX Runtime and torch sessions
are loaded once (on the first request that needs them) and used by one thread at a time, and the
gallery's SQLite connection stays on that thread. Requests await it (`call`), so the event loop
(live page, events) never waits on a model."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import HTTPException

from stream.errors import FacestreamError

if TYPE_CHECKING:
    import numpy as np

    from stream.faces import FaceAnalyzer
    from stream.gallery.matcher import Matcher

T = TypeVar("T")


class Engine:
    def __init__(
        self,
        gallery: Path | None,
        model: str,
        threshold: float | None,
        home: Path | None,
        analyzer: FaceAnalyzer | None = None,  # one already loaded (tests share theirs)
    ):
        self.gallery = gallery
        self.model = model
        self.threshold = threshold
        self.home = home
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="facestream-engine")
        self._analyzer = analyzer
        self._matcher: Matcher | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        def _close() -> None:
            if self._matcher is not None:
                self._matcher.close()

        self._pool.submit(_close).result()
        self._pool.shutdown()

    # ----- on the worker thread ----------------------------------------------------------------------
    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            from stream.faces import FaceAnalyzer

            self._analyzer = FaceAnalyzer(model=self.model, home=self.home)
        return self._analyzer

    def _gallery_path(self, must_exist: bool) -> Path:
        if self.gallery is None:
            raise HTTPException(503, "no gallery configured (start with --gallery G)")
        if must_exist and not self.gallery.is_file():
            raise HTTPException(409, f"gallery {self.gallery} does not exist yet: enroll someone first")
        return self.gallery

    def matcher(self) -> Matcher:
        from stream.gallery.matcher import Matcher

        if self._matcher is None:
            self._matcher = Matcher(self._gallery_path(True), self.model, self.threshold)
        else:
            self._matcher.refresh()  # one counter row: picks up enrollments made elsewhere
        return self._matcher

    def identify(self, frame: np.ndarray) -> dict[str, Any]:
        from stream.gallery.commands import identify_faces, identify_json

        matcher = self.matcher()
        return identify_json(*identify_faces(self.analyzer, matcher, frame))

    def verify(self, frames: list[np.ndarray], names: tuple[str, str], largest: bool) -> dict[str, Any]:
        from stream.gallery.commands import threshold_for, verify_json

        gallery = self.gallery if self.gallery is not None and self.gallery.is_file() else None
        threshold = threshold_for(self.model, self.threshold, gallery)
        return verify_json(self.analyzer, frames, (Path(names[0]), Path(names[1])), threshold, largest)

    def people(self) -> dict[str, Any]:
        from stream.gallery.store import Gallery

        path = self._gallery_path(False)
        if not path.is_file():
            return {"people": [], "gallery": str(path)}
        with Gallery.open(path) as g:
            people = g.people()
        return {
            "people": [{"name": p.name, "samples": p.samples, "models": p.models} for p in people],
            "gallery": str(path),
        }

    def thumbnail(self, name: str) -> bytes:
        from stream.gallery.store import Gallery

        with Gallery.open(self._gallery_path(True)) as g:
            crop = g.first_crop(name)
        if crop is None:
            raise HTTPException(404, f"no person named {name!r}")
        return crop

    def enroll(self, name: str, photos: list[tuple[str, bytes]], largest: bool) -> list[dict[str, str]]:
        """Through the CLI's enrollment path (checks every photo, then stores them in one transaction:
        one unfit photo refuses the request and nothing is written)."""
        from stream.gallery.enroll import EnrollOptions, enroll_person
        from stream.gallery.store import Gallery, validate_name

        validate_name(name)
        path = self._gallery_path(False)
        existed = path.exists()
        with tempfile.TemporaryDirectory(prefix="facestream-upload-") as tmp:
            files = []
            for i, (safe, data) in enumerate(photos):
                f = Path(tmp) / f"{i}-{safe}"
                f.write_bytes(data)
                files.append(f)
            analyzer = self.analyzer  # models load before the gallery file may appear
            gallery = Gallery.open(path, create=True)
            try:
                outcomes = enroll_person(gallery, analyzer, name, files, EnrollOptions(largest=largest))
            except BaseException:
                empty = gallery.count_samples() == 0
                gallery.close()
                if not existed and empty:  # a failed first enrollment leaves no empty gallery behind
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                raise
            gallery.close()
        return [
            {"photo": o.path.name.split("-", 1)[1], "status": o.status, "detail": o.detail} for o in outcomes
        ]

    def rename(self, old: str, new: str) -> None:
        from stream.gallery.store import Gallery

        with Gallery.open(self._gallery_path(True)) as g:
            if g.person_id(old) is None:
                raise HTTPException(404, f"no person named {old!r}")
            g.rename_person(old, new)

    def remove(self, name: str) -> int:
        from stream.gallery.store import Gallery

        with Gallery.open(self._gallery_path(True)) as g:
            if g.person_id(name) is None:
                raise HTTPException(404, f"no person named {name!r}")
            return g.remove_person(name)


def one_line(e: FacestreamError) -> str:
    return " ".join(str(e).split())
