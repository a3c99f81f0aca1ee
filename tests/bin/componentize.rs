//! Turns a WASI preview 1 core module into a WASI preview 2 component with one of
//! wasmtime's preview 1 adapters (as `wasm-tools component new --adapt` does):
//! `componentize [--adapter command|reactor|proxy] IN.wasm OUT.wasm`, the command adapter
//! by default. `hack/build-wasm` uses it to build the component test workloads from the C
//! ones: commands with the command adapter, and the workloads that export their own WIT
//! interfaces (workloads/http) with the reactor adapter. `componentize --wat IN.wat
//! OUT.wasm` writes a component written by hand in the component text format (the WASI
//! 0.3 workloads of workloads/p3) as a binary.

use anyhow::Context;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

const USAGE: &str = "usage: componentize [--adapter command|reactor|proxy] IN.wasm OUT.wasm | --wat IN.wat OUT.wasm";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, input, output] = args.as_slice()
        && flag == "--wat"
    {
        // Validated where it runs: wasmtime compiles it.
        let component = wat::parse_file(input).with_context(|| format!("parsing {input}"))?;
        std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
        return Ok(());
    }
    let (adapter, rest) = match args.as_slice() {
        [flag, kind, rest @ ..] if flag == "--adapter" => (adapter(kind)?, rest),
        rest => (WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, rest),
    };
    let [input, output] = rest else {
        anyhow::bail!(USAGE);
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)?
        .validate(true)
        .encode()?;
    std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}

/// The adapter named on the command line.
fn adapter(kind: &str) -> anyhow::Result<&'static [u8]> {
    match kind {
        "command" => Ok(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER),
        "reactor" => Ok(WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER),
        "proxy" => Ok(WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER),
        other => anyhow::bail!("unknown adapter {other:?}; {USAGE}"),
    }
}
