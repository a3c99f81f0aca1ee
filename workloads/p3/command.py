"""command (wasi:cli/run@0.3.0): writes its arguments and the pod's name to stdout
through a WASI 0.3 stream, e.g. for `a b` in pod demo-1

    hello from python p3
    args: a b
    pod: demo-1

`alloc N` among the arguments then fills a bytearray of N bytes and writes
`allocated: N bytes` (a memory-limit test: past the limit, Python's MemoryError traps
the component). `fail` among them makes `run` return an error: exit status 1.
hack/build-wasm makes it target/wasm/p3-py-command.component.wasm."""
from componentize_py_types import Err
from wit_world import byte_stream, exports
from wit_world.imports import environment, stdout


class Run(exports.Run):
    async def run(self) -> None:
        args = environment.get_arguments()[1:]  # [0] is the program's name
        pod = dict(environment.get_environment()).get("POD_NAME", "unknown")
        await write_stdout(f"hello from python p3\nargs: {' '.join(args)}\npod: {pod}\n")
        if "alloc" in args[:-1]:
            size = int(args[args.index("alloc") + 1])
            held = bytearray(size)  # zero-filled: every page is written
            await write_stdout(f"allocated: {len(held)} bytes\n")
        if "fail" in args:
            raise Err(None)


async def write_stdout(text: str) -> None:
    """Writes TEXT to stdout and waits until the host has taken all of it."""
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    with tx:  # closing the writer ends the stream, so that `done` resolves
        await tx.write_all(text.encode())
    await done.read()
