//! A TCP proxy on loopback between a node and the API server that the test can take
//! down and bring back: to the node, an API server that is unreachable (connections
//! refused by reset, open ones cut) and then back, while the real API server keeps
//! serving every other test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; stopped with every connection when dropped.
#[derive(Debug)]
pub struct Proxy {
    /// `127.0.0.1:<port>` to reach the API server through.
    pub addr: String,
    up: Arc<AtomicBool>,
    /// Bumped on every outage: connections of an earlier generation are cut.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`), up.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let task = {
            let (up, generation, target) = (up.clone(), generation.clone(), target.to_owned());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Ok(Self {
            addr,
            up,
            generation,
            task,
        })
    }

    /// Takes the API server away: open connections are cut, new ones refused.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Brings it back.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
