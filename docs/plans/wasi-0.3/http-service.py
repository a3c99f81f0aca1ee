"""A wasi:http@0.3.0 service: answers every request with "hello from p3" and
a trailer, writing the body after `handle` has returned the response."""
import componentize_py_async_support
from componentize_py_types import Ok
from wit_world import exports, byte_stream, result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world.imports.wasi_http_types import Request, Response, Fields


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        tx, rx = byte_stream()
        ttx, trx = trailers_future(lambda: Ok(None))
        headers = Fields.from_list([("content-type", b"text/plain"), ("trailer", b"x-done")])
        response, _sent = Response.new(headers, rx, trx)

        async def write_body() -> None:
            with tx:
                await tx.write_all(b"hello from p3\n")
            await ttx.write(Ok(Fields.from_list([("x-done", b"1")])))

        componentize_py_async_support.spawn(write_body())
        return response
