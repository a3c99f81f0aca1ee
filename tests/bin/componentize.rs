//! Turns a WASI preview 1 core module into a WASI preview 2 component with one of
//! wasmtime's preview 1 adapters (as `wasm-tools component new --adapt` does):
//! `componentize [--adapter command|reactor|proxy] IN.wasm OUT.wasm`, the command adapter
//! by default. `hack/build-wasm` uses it to build the component test workloads from the C
//! ones: commands with the command adapter, and the workloads that export their own WIT
//! interfaces (workloads/http) with the reactor adapter. `componentize --wat IN.wat
//! OUT.wasm` writes a component written by hand in the component text format (the WASI
//! 0.3 workloads of workloads/p3) as a binary. `componentize --wit DIR --world WORLD
//! IN.wat OUT.wasm` makes a component of a core module written by hand in the text format:
//! it embeds the component type of WORLD, from the WIT package in DIR (with its `deps/`),
//! and encodes the module against it (as `wasm-tools component embed` then `component
//! new` do); the module's imports and exports follow wit-component's core naming
//! (`[async-lift]...`, `[stream-new-N]...`, `[task-return]...`).

use anyhow::Context;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

const USAGE: &str = "usage: componentize [--adapter command|reactor|proxy] IN.wasm OUT.wasm \
                     | --wat IN.wat OUT.wasm | --wit DIR --world WORLD IN.wat OUT.wasm";

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
    if let [flag, wit, world_flag, world, input, output] = args.as_slice()
        && flag == "--wit"
        && world_flag == "--world"
    {
        let component = with_world(wit, world, input)?;
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

/// The component of the core module in `input` (text format) whose imports and exports
/// are those of `world` in the WIT package of the directory `wit`.
fn with_world(wit: &str, world: &str, input: &str) -> anyhow::Result<Vec<u8>> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading the WIT of {wit}"))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut module = wat::parse_file(input).with_context(|| format!("parsing {input}"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
        .with_context(|| format!("making a component of {input}"))
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
