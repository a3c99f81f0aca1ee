"""grpc (wasi:http@0.3.0): a gRPC service with two unary methods, framing and
protobuf done by hand (no gRPC library):

- /grpc.health.v1.Health/Check answers HealthCheckResponse{status: SERVING} to any
  HealthCheckRequest (the kubelet's gRPC probe);
- /krustlet.test.Echo/Say answers with the request message unchanged (a message of
  one string field 1).

Each message travels in a 5-byte frame: a compressed flag (0) and its length (u32,
big-endian). The response is 200 `content-type: application/grpc`, the frame, then
the trailers `grpc-status` (0 when it went well) and `grpc-message` on an error; an
unknown method gets grpc-status 12 (UNIMPLEMENTED) and no message. The response
declares its trailers (`trailer:`), which an HTTP/1.1 server needs to send them.
hack/build-wasm makes it target/wasm/p3-py-grpc.component.wasm."""
import componentize_py_async_support
from componentize_py_types import Ok
from wit_world import byte_stream, exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world import result_unit_wasi_http_types_error_code_future as result_future
from wit_world.imports.wasi_http_types import Fields, Request, Response

OK, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 8, 12, 13
# HealthCheckResponse{status: SERVING}: field 1 as a varint (tag 0x08), value 1.
SERVING = b"\x08\x01"
# The largest message read (gRPC's default limit); a longer body is not read to its end.
MAX_MESSAGE = 4 << 20


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query()
        body = await read_body(request, MAX_MESSAGE + 5)
        if body is None:
            return respond(None, RESOURCE_EXHAUSTED, f"request larger than {MAX_MESSAGE} bytes")
        message = unframe(body)
        if message is None:
            return respond(None, INTERNAL, "the request is not one uncompressed gRPC message")
        if path == "/grpc.health.v1.Health/Check":
            return respond(SERVING, OK, None)
        if path == "/krustlet.test.Echo/Say":
            return respond(message, OK, None)
        return respond(None, UNIMPLEMENTED, None)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body of REQUEST (it arrives in pieces), or None past LIMIT bytes."""
    done_tx, done_rx = result_future(lambda: Ok(None))
    stream, trailers = Request.consume_body(request, done_rx)
    data = bytearray()
    with stream, trailers:
        while not stream.writer_dropped and len(data) <= limit:
            data += await stream.read(64 << 10)
    await done_tx.write(Ok(None))  # tells the host the request was handled
    return bytes(data) if len(data) <= limit else None


def unframe(body: bytes) -> bytes | None:
    """The message of BODY if BODY is exactly one uncompressed frame, else None."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        return None
    return body[5:]


def respond(message: bytes | None, status: int, error: str | None) -> Response:
    """A 200 gRPC response: MESSAGE framed (if any), then the trailers."""
    headers = Fields.from_list([
        ("content-type", b"application/grpc"),
        ("trailer", b"grpc-status, grpc-message"),
    ])
    tx, rx = byte_stream()
    trailers_tx, trailers_rx = trailers_future(lambda: Ok(None))
    response, _sent = Response.new(headers, rx, trailers_rx)
    trailers = [("grpc-status", str(status).encode())]
    if error is not None:
        trailers.append(("grpc-message", error.encode()))

    # Written once `handle` has returned the response (see service.py).
    async def send() -> None:
        with tx:
            if message is not None:
                await tx.write_all(b"\x00" + len(message).to_bytes(4, "big") + message)
        await trailers_tx.write(Ok(Fields.from_list(trailers)))

    componentize_py_async_support.spawn(send())
    return response
