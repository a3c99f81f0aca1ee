"""A wasi:cli/run@0.3.0 command: writes its arguments and one environment
variable to stdout through the 0.3 stdout stream; `fail` as first argument
makes `run` return an error (exit status 1)."""
from componentize_py_types import Err
from wit_world import exports, byte_stream
from wit_world.imports import environment, stdout


class Run(exports.Run):
    async def run(self) -> None:
        args = environment.get_arguments()
        env = dict(environment.get_environment())
        text = f"p3 args={args} POD_NAME={env.get('POD_NAME', 'unknown')}\n"
        tx, rx = byte_stream()
        done = stdout.write_via_stream(rx)
        with tx:
            await tx.write_all(text.encode())
        await done.read()
        if args[1:2] == ["fail"]:
            raise Err(None)
