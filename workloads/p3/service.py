"""service (wasi:http@0.3.0): answers every request with 200 text/plain

    hello from python p3
    pod: NAME

where NAME is the environment variable POD_NAME (else `unknown`). On the path
/trailers the response declares `trailer: x-done` and ends with the trailer
`x-done: 1` (an HTTP/1.1 client sees it only when it sent `TE: trailers`).
hack/build-wasm makes it target/wasm/p3-py-service.component.wasm."""
import os

import componentize_py_async_support
from componentize_py_types import Ok
from wit_world import byte_stream, exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        with_trailer = request.get_path_with_query() == "/trailers"
        # The instance's environment: componentize-py fills os.environ when an
        # instance starts (through WASI 0.2), not from the build's.
        pod = os.environ.get("POD_NAME", "unknown")
        body = f"hello from python p3\npod: {pod}\n".encode()
        headers = [("content-type", b"text/plain")]
        if with_trailer:
            headers.append(("trailer", b"x-done"))
        tx, rx = byte_stream()
        trailers_tx, trailers_rx = trailers_future(lambda: Ok(None))
        response, _sent = Response.new(Fields.from_list(headers), rx, trailers_rx)

        # The body can only be written once the host holds the response, that is
        # after `handle` has returned it: a task of the same call does it then.
        async def send() -> None:
            with tx:
                await tx.write_all(body)
            trailers = Fields.from_list([("x-done", b"1")]) if with_trailer else None
            await trailers_tx.write(Ok(trailers))

        componentize_py_async_support.spawn(send())
        return response
