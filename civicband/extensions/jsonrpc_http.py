"""JSON-RPC over twisted.web, imported only when JSONRPC_ENABLED serves it (a faster start)."""

from __future__ import annotations

import logging
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from civicband.extensions.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_BODY,
    METHOD_NOT_FOUND,
    PATH,
    READ_ONLY,
    Dispatcher,
    Redactor,
    describe,
    error_answer,
)

logger = logging.getLogger("civicband.extensions.jsonrpc")


class StatsResource(Resource):
    """HTTP for the protocol: POST on /crawler/stats only; every other path or verb an error."""

    isLeaf = True

    def __init__(self, dispatcher: Dispatcher, redactor: Redactor) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.redactor = redactor

    def render(self, request: Request) -> bytes | int:
        """Answer one HTTP request with a JSON-RPC body, or 204 when there is nothing to say."""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            answer = self.answer(request)
        except Exception as error:
            logger.error("JSON-RPC: answering failed: %s", self.redactor.text(describe(error)))
            request.setResponseCode(500)
            answer = error_answer(None, INTERNAL_ERROR, "Internal error")
        if answer is None:
            # Per RFC 9110 a 204 carries no Content-Length, which returning b"" would add.
            request.setResponseCode(204)
            request.responseHeaders.removeHeader(b"content-type")
            request.finish()
            return NOT_DONE_YET
        return self.redactor.dumps(answer)

    def answer(self, request: Request) -> Any:
        """The JSON-RPC answer to an HTTP request, setting the HTTP status of a refusal."""
        if request.path != PATH:
            request.setResponseCode(404)
            return error_answer(None, METHOD_NOT_FOUND, f"{READ_ONLY}, by POST on {PATH.decode()}")
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            return error_answer(
                None,
                INVALID_REQUEST,
                f"Invalid Request: POST a JSON-RPC 2.0 request to {PATH.decode()}",
            )
        body = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(body) > MAX_BODY:
            request.setResponseCode(413)
            return error_answer(None, INVALID_REQUEST, f"Invalid Request: over {MAX_BODY} bytes")
        return self.dispatcher.handle(body)


class QuietSite(Site):
    """twisted.web's site without its access log: a monitor polling stats would flood the log."""

    noisy = False

    def log(self, request: Request) -> None:
        """Log nothing per request."""
