//! Turns a WASI preview 1 command module into a WASI preview 2 command component, with
//! wasmtime's preview 1 adapter (as `wasm-tools component new --adapt` does):
//! `componentize IN.wasm OUT.wasm`. `hack/build-wasm` uses it to build the component
//! test workloads from the C ones.

use anyhow::Context;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        anyhow::bail!("usage: componentize IN.wasm OUT.wasm");
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )?
        .validate(true)
        .encode()?;
    std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
