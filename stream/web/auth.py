"""Who may do what. Loopback: anyone may read (the live page, identify, the people list), and every
gallery change needs the token. Any other address: everything but /healthz and /readyz needs it.

The token comes from the config (dashboard.token), else it is generated once and printed once; a
supervised dashboard keeps the generated one in the run directory (0600) so that a restart keeps it.
Clients send it as `Authorization: Bearer TOKEN`; the page logs in once (POST /api/login) and then
holds it in an HttpOnly, SameSite=Strict cookie, which EventSource sends and other sites cannot."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request

from stream.errors import FacestreamError
from stream.pipeline.config import is_loopback

COOKIE = "facestream_token"
TOKEN_FILE = "dashboard-token"


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:8080' -> ('::1', 8080)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FacestreamError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def resolve_token(
    configured: str | None, keep_in: Path | None = None, where: str = "dashboard.token"
) -> tuple[str, bool]:
    """(token, generated now). A generated token is kept in `keep_in` (if given) for restarts."""
    if configured:
        if len(configured) < 16:
            raise FacestreamError(f"{where}: use at least 16 characters")
        return configured, False
    path = keep_in / TOKEN_FILE if keep_in is not None else None
    if path is not None and path.is_file():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(24)
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
    return token, True


@dataclass(frozen=True)
class Auth:
    token: str
    reads_need_token: bool  # listening beyond loopback

    @classmethod
    def for_host(cls, host: str, token: str) -> Auth:
        return cls(token, reads_need_token=not is_loopback(host))

    def presented(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    def valid(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def check(self, request: Request, write: bool) -> None:
        if not (write or self.reads_need_token):
            return
        token = self.presented(request)
        if token is None:
            why = "changing the gallery needs the token" if write else "this dashboard needs the token"
            raise HTTPException(401, f"{why} (Authorization: Bearer TOKEN, or log in on the page)")
        if not self.valid(token):
            raise HTTPException(401, "wrong token")

    async def read(self, request: Request) -> None:
        """Dependency: reading (the page's data, identify, verify)."""
        self.check(request, write=False)

    async def write(self, request: Request) -> None:
        """Dependency: changing the gallery."""
        self.check(request, write=True)
