//! `kubectl port-forward` as a user runs it: one child process listening on a free port
//! of 127.0.0.1, its stderr kept for what it said.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Cluster;

/// A running `kubectl port-forward pod/<pod> :<port>` and the local port it listens on.
pub struct PortForward {
    child: tokio::process::Child,
    local: u16,
    /// What kubectl wrote to stderr so far.
    stderr: Arc<Mutex<String>>,
}

impl PortForward {
    /// Starts kubectl and waits (up to 60 s) for its "Forwarding from" line.
    pub async fn start(cluster: &Cluster, pod: &str, port: u16) -> anyhow::Result<Self> {
        let mut child = cluster
            .kubectl_command(&[
                "port-forward",
                "--address",
                "127.0.0.1",
                &format!("pod/{pod}"),
                &format!(":{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let local = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let port = rest.split_whitespace().next().unwrap_or_default();
                    return Ok::<_, anyhow::Error>(port.parse::<u16>()?);
                }
            }
            anyhow::bail!("kubectl port-forward ended before it listened")
        })
        .await
        .context("kubectl port-forward did not listen within 60 s")??;
        // Its later lines ("Handling connection for ...") must not fill the pipes.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines =
            BufReader::new(child.stderr.take().context("kubectl's stderr")?).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
                // Bounded: a long session's complaints keep their first 64 KiB.
                if s.len() < 64 << 10 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Self {
            child,
            local,
            stderr,
        })
    }

    /// Where kubectl listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.local))
    }

    /// What kubectl wrote to stderr so far.
    pub fn said(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to 60 s) until kubectl's stderr contains `needle`; all it said.
    pub async fn wait_said(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.said().contains(needle) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.said()
    }

    /// Stops kubectl (it closes the upgraded connection to the node with it); what it
    /// wrote to stderr.
    pub async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.said()
    }
}
