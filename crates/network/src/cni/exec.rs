//! One plugin call: the binary found in a binary directory, the CNI variables in a clean
//! environment, the configuration on stdin, a bounded result on stdout.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Attachment, Cni, Error, MAX_OUTPUT_BYTES, NetworkList, Plugin, Result};

/// The plugin's binary: a regular, executable file named `kind` in the first binary
/// directory that has one.
fn find(cni: &Cni, kind: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in &cni.bin_dirs {
        let path = dir.join(kind);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(path);
        }
    }
    Err(Error::NotFound {
        plugin: kind.to_owned(),
        path: cni.bin_dirs.clone(),
    })
}

/// Runs `plugin` for `command` and returns its result (`Value::Null` for a DEL or CHECK
/// that printed nothing).
pub(super) async fn call(
    cni: &Cni,
    att: &Attachment,
    list: &NetworkList,
    plugin: &Plugin,
    command: &'static str,
    if_name: &str,
    stdin: &[u8],
) -> Result<Value> {
    let fail = |message: String| Error::Plugin {
        plugin: plugin.kind.clone(),
        network: list.name.clone(),
        command,
        message,
    };
    let binary = find(cni, &plugin.kind)?;
    let cni_path = std::env::join_paths(&cni.bin_dirs)
        .map_err(|e| Error::Config(format!("--cni-bin-dir: {e}")))?;
    let args = att
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once("IgnoreUnknown=1".to_owned()))
        .collect::<Vec<_>>()
        .join(";");
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        // Plugins run helpers (iptables, nft) found on the agent's PATH.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", if_name)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
    let input = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = stdin.to_vec();
    let run = async {
        // Written and read side by side: a plugin may print before it reads all input.
        let writer = tokio::spawn(async move {
            if let Some(mut i) = input {
                // A plugin that exits without reading is not an error here.
                let _ = i.write_all(&stdin).await;
            }
        });
        let errors = tokio::spawn(async move {
            let mut err = Vec::new();
            if let Some(e) = stderr {
                let _ = e.take(4096).read_to_end(&mut err).await;
            }
            err
        });
        let mut out = Vec::new();
        if let Some(o) = stdout {
            let _ = o.take(MAX_OUTPUT_BYTES + 1).read_to_end(&mut out).await;
        }
        if out.len() as u64 > MAX_OUTPUT_BYTES {
            // It would block on a full pipe forever: stop it now.
            let _ = child.start_kill();
        }
        let status = child.wait().await;
        writer.abort();
        let err = errors.await.unwrap_or_default();
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(cni.timeout, run)
        .await
        .map_err(|_| fail(format!("no answer within {:?}; killed", cni.timeout)))?;
    if out.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(fail(format!("printed more than {MAX_OUTPUT_BYTES} bytes")));
    }
    let status = status.map_err(|e| fail(e.to_string()))?;
    if !status.success() {
        // The CNI error object: {"code": N, "msg": "...", "details": "..."}.
        let message = match serde_json::from_slice::<Value>(&out) {
            Ok(e) => {
                let msg = e.get("msg").and_then(Value::as_str).unwrap_or("");
                match e.get("details").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg.to_owned(),
                }
            }
            Err(_) => String::new(),
        };
        let message = if message.is_empty() {
            let tail = String::from_utf8_lossy(&err);
            format!("{status}: {}", tail.trim())
        } else {
            message
        };
        return Err(fail(message));
    }
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out).map_err(|e| fail(format!("result is not JSON: {e}")))
}
