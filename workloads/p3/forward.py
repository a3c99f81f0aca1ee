"""forward (wasi:http@0.3.0): for each request, sends `GET TARGET_URL + PATH` (PATH the
request's path and query, TARGET_URL an `http://HOST[:PORT]` or `https://...` URL in the
environment) with `wasi:http/client@0.3.0` `send`, and answers

    200 upstream STATUS: BODY

with the upstream's status and body (its first 64 KiB), or 502 with the error code's
WIT name when `send` fails: `HTTP-request-denied` when the host refuses the request
(`internal-error: DETAIL` with its detail), `connection-refused`, ... A missing or bad
TARGET_URL is a 500. hack/build-wasm makes it
target/wasm/p3-py-forward.component.wasm."""
import os

import componentize_py_async_support
from componentize_py_async_support.futures import FutureReader
from componentize_py_types import Err, Ok
from wit_world import byte_stream
from wit_world import exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world import result_unit_wasi_http_types_error_code_future as result_future
from wit_world.imports import client
from wit_world.imports.wasi_http_types import (
    ErrorCode_InternalError,
    Fields,
    Method_Get,
    Request,
    Response,
    Scheme_Http,
    Scheme_Https,
)

# The most of the upstream's body that is read and answered.
MAX_BODY = 64 << 10

# The cases of wasi:http/types error-code, as WIT spells them (the bindings' class
# names lose the case: ErrorCode_HttpRequestDenied is HTTP-request-denied).
ERROR_CODES = [
    "DNS-timeout", "DNS-error", "destination-not-found", "destination-unavailable",
    "destination-IP-prohibited", "destination-IP-unroutable", "connection-refused",
    "connection-terminated", "connection-timeout", "connection-read-timeout",
    "connection-write-timeout", "connection-limit-reached", "TLS-protocol-error",
    "TLS-certificate-error", "TLS-alert-received", "HTTP-request-denied",
    "HTTP-request-length-required", "HTTP-request-body-size", "HTTP-request-method-invalid",
    "HTTP-request-URI-invalid", "HTTP-request-URI-too-long",
    "HTTP-request-header-section-size", "HTTP-request-header-size",
    "HTTP-request-trailer-section-size", "HTTP-request-trailer-size",
    "HTTP-response-incomplete", "HTTP-response-header-section-size",
    "HTTP-response-header-size", "HTTP-response-body-size",
    "HTTP-response-trailer-section-size", "HTTP-response-trailer-size",
    "HTTP-response-transfer-coding", "HTTP-response-content-coding", "HTTP-response-timeout",
    "HTTP-upgrade-failed", "HTTP-protocol-error", "loop-detected", "configuration-error",
    "internal-error",
]
BY_CLASS = {name.replace("-", "").lower(): name for name in ERROR_CODES}


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        target = os.environ.get("TARGET_URL", "")
        scheme, sep, authority = target.partition("://")
        if not sep or scheme not in ("http", "https") or not authority.rstrip("/"):
            return respond(500, f"TARGET_URL {target!r} is not an http(s)://HOST[:PORT] URL\n")
        authority, _, prefix = authority.partition("/")
        outgoing, sent = new_get(Scheme_Http() if scheme == "http" else Scheme_Https(),
                                 authority, "/" + prefix.rstrip("/") + path if prefix else path)
        # `sent` is held until the body is read: wasmtime 49's host aborts the task
        # that drives the connection when the guest drops it, which ends the body
        # early, often before its first byte, with no error.
        with sent:
            try:
                upstream = await client.send(outgoing)
            except Err as e:
                return respond(502, error_text(e.value) + "\n")
            status = upstream.get_status_code()
            try:
                body = await read_body(upstream, MAX_BODY)
            except Err as e:
                return respond(502, f"upstream {status}, then {error_text(e.value)}\n")
            result = await sent.read()
        if isinstance(result, Err):
            return respond(502, f"upstream {status}, then {error_text(result.value)}\n")
        return respond(200, f"upstream {status}: ".encode() + body)


def new_get(scheme, authority: str, path: str) -> tuple[Request, FutureReader]:
    """A `GET scheme://authority/path` without a body, and the future of its
    transmission's result."""
    trailers_tx, trailers_rx = trailers_future(lambda: Ok(None))
    request, sent = Request.new(Fields(), None, trailers_rx, None)
    with trailers_tx:  # no trailers: the default, Ok(None), once the host reads it
        pass
    request.set_method(Method_Get())
    request.set_scheme(scheme)
    request.set_authority(authority)
    request.set_path_with_query(path)
    return request, sent


def error_text(code) -> str:
    """CODE's case as WIT names it, with internal-error's detail."""
    name = BY_CLASS.get(type(code).__name__.removeprefix("ErrorCode_").lower(), repr(code))
    if isinstance(code, ErrorCode_InternalError) and code.value:
        return f"{name}: {code.value}"
    return name


async def read_body(response: Response, limit: int) -> bytes:
    """RESPONSE's body, up to LIMIT bytes (the rest is not read).

    Raises `Err(ErrorCode)` when the body, read to its end, ended in an error."""
    done_tx, done_rx = result_future(lambda: Ok(None))
    stream, trailers = Response.consume_body(response, done_rx)
    data = bytearray()
    with stream, trailers:
        while not stream.writer_dropped and len(data) < limit:
            data += await stream.read(min(64 << 10, limit - len(data)))
        # Read to its end: the trailers future says whether it ended well.
        result = await trailers.read() if stream.writer_dropped else Ok(None)
    await done_tx.write(Ok(None))  # tells the host the response was handled
    if isinstance(result, Err):
        raise result
    return bytes(data)


def respond(status: int, text: str | bytes) -> Response:
    """A STATUS text/plain response holding TEXT."""
    body = text.encode() if isinstance(text, str) else text
    tx, rx = byte_stream()
    trailers_tx, trailers_rx = trailers_future(lambda: Ok(None))
    response, _sent = Response.new(Fields.from_list([("content-type", b"text/plain")]), rx,
                                   trailers_rx)
    response.set_status_code(status)

    # Written once `handle` has returned the response (see service.py).
    async def send() -> None:
        with tx:
            await tx.write_all(body)
        await trailers_tx.write(Ok(None))

    componentize_py_async_support.spawn(send())
    return response
