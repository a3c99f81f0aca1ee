//! A pod's network namespace and the one thread of the agent that lives inside it.
//!
//! A socket belongs to the network namespace of the thread that creates it, whichever
//! thread uses it afterwards. So each pod's namespace gets one thread, entered once,
//! running a single-threaded tokio runtime: the pod's listening sockets, its outgoing
//! connections and any guest code that may open sockets (`wasi:sockets`) are made there.
//! A socket made there can then be driven from any other runtime of the agent. Blocking
//! work spawned there (a guest's name lookups, its file operations) gets at most
//! `BLOCKING_THREADS` (4) threads, also inside the namespace.
//!
//! The namespace itself is pinned by a bind mount of the thread's `ns/net` link onto a
//! file (`/run/netns/<name>`, where `ip netns` looks), so it outlives the thread and the
//! agent: a restarted agent enters it again and the pod keeps its address. [`remove`]
//! unpins it; the kernel frees the namespace, its veth and its routes once nothing
//! holds it any more.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use tokio::sync::oneshot;

/// How many threads may run the blocking work (`spawn_blocking`) of one namespace's
/// runtime at once: a guest's name lookups and file operations, which wasmtime-wasi
/// hands to blocking threads. More work waits in the runtime's queue. tokio's default
/// would let one pod start 512 threads.
const BLOCKING_THREADS: usize = 4;

/// `statfs` magic of the namespace file system (`NSFS_MAGIC`).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A network namespace, pinned at [`NetNs::path`], with the agent's thread inside it.
///
/// Dropping it ends the thread; the namespace stays pinned until [`remove`].
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    handle: tokio::runtime::Handle,
    /// Dropped with the value: the thread's runtime then returns and the thread ends.
    _stop: oneshot::Sender<()>,
}

/// How the thread gets into its namespace.
enum Enter {
    /// A fresh namespace (`unshare`), pinned at the path.
    Create(PathBuf),
    /// The namespace pinned at the path (`setns`).
    Open(PathBuf),
}

impl NetNs {
    /// A new, empty network namespace (only a loopback interface, down), pinned at
    /// `path`, which must not exist yet; its parent directory is created if missing.
    ///
    /// # Errors
    /// The path exists already, the caller may not create namespaces (no
    /// `CAP_SYS_ADMIN`), or the bind mount fails; nothing is left behind then.
    pub async fn create(path: &Path) -> io::Result<Self> {
        Self::start(Enter::Create(path.to_owned())).await
    }

    /// Enters the namespace pinned at `path` (by [`NetNs::create`], maybe of an earlier
    /// run of the agent).
    ///
    /// # Errors
    /// `path` is missing, or is not a pinned namespace (a plain file, a symlink), or
    /// it cannot be entered.
    pub async fn open(path: &Path) -> io::Result<Self> {
        Self::start(Enter::Open(path.to_owned())).await
    }

    async fn start(enter: Enter) -> io::Result<Self> {
        let path = match &enter {
            Enter::Create(p) | Enter::Open(p) => p.clone(),
        };
        let name = path
            .file_name()
            .map_or_else(|| "netns".into(), |n| n.to_string_lossy().into_owned());
        let (ready_tx, ready_rx) = oneshot::channel::<io::Result<tokio::runtime::Handle>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!(
                "netns-{}",
                name.chars().take(8).collect::<String>()
            ))
            // The thread only makes sockets and runs small host tasks; guest code on it
            // runs on wasmtime's own stacks.
            .stack_size(256 << 10)
            .spawn(move || {
                let runtime = enter_namespace(&enter).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // Started from this thread, so inside the namespace too.
                        .max_blocking_threads(BLOCKING_THREADS)
                        .build()
                });
                match runtime {
                    Ok(rt) => {
                        if ready_tx.send(Ok(rt.handle().clone())).is_ok() {
                            // Runs the pod's tasks until the owner goes.
                            rt.block_on(async {
                                let _ = stop_rx.await;
                            });
                        }
                        rt.shutdown_background();
                    }
                    // `enter_namespace` left nothing behind.
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let handle = ready_rx
            .await
            .map_err(|_| io::Error::other("the namespace thread ended before it was ready"))??;
        Ok(Self {
            path,
            handle,
            _stop: stop_tx,
        })
    }

    /// Where the namespace is pinned (what a CNI plugin gets as `CNI_NETNS`).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime of the thread inside the namespace. Only async tasks may be spawned
    /// on it from outside: `spawn_blocking` from another thread would start its thread
    /// outside the namespace.
    #[must_use]
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` on the thread inside the namespace and returns what it returns.
    ///
    /// # Errors
    /// The thread is gone (its runtime shut down).
    pub async fn run<R, F>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn(async move { f() }).await
    }

    /// Runs `fut` to completion on the thread inside the namespace.
    ///
    /// # Errors
    /// The thread is gone (its runtime shut down), or the task panicked.
    pub async fn spawn<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| io::Error::other(format!("the namespace thread failed: {e}")))
    }

    /// A TCP listener inside the namespace, non-blocking, ready for
    /// `tokio::net::TcpListener::from_std` on any runtime.
    ///
    /// # Errors
    /// The address is in use or not on any interface of the namespace.
    pub async fn tcp_listener(
        &self,
        addr: std::net::SocketAddr,
    ) -> io::Result<std::net::TcpListener> {
        self.run(move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .await?
    }

    /// A TCP connection made inside the namespace to `addr`, within `timeout`; it is
    /// handed out of the namespace's runtime, ready for any other.
    ///
    /// # Errors
    /// Nothing listens there, the address is not reachable from the namespace, or the
    /// connection took longer than `timeout`.
    pub async fn tcp_connect(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        let std = self
            .spawn(async move {
                let conn = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                conn.into_std()
            })
            .await??;
        tokio::net::TcpStream::from_std(std)
    }
}

/// Moves the calling thread into the namespace of `enter`.
fn enter_namespace(enter: &Enter) -> io::Result<()> {
    match enter {
        Enter::Create(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // The mount point: a new, empty file (never one that was there before).
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
            drop(rustix::fs::open(path, flags, Mode::from_raw_mode(0o444))?);
            // Only CLONE_NEWNET, which changes nothing but this thread's network
            // namespace (the unsafety of `unshare` is about CLONE_FILES).
            #[allow(
                deprecated,
                reason = "unshare_unsafe needs unsafe code; NEWNET alone is sound"
            )]
            let unshared = rustix::thread::unshare(UnshareFlags::NEWNET);
            let pinned = unshared.and_then(|()| {
                rustix::mount::mount_bind("/proc/thread-self/ns/net", path.as_path())
            });
            if let Err(e) = pinned {
                let _ = std::fs::remove_file(path);
                return Err(e.into());
            }
            Ok(())
        }
        Enter::Open(path) => {
            let fd = open_pinned(path)?;
            rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(LinkNameSpaceType::Network),
            )?;
            Ok(())
        }
    }
}

/// Opens a pinned namespace, refusing anything that is not one (a symlink planted in
/// its place, a plain file).
pub(crate) fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    let magic = rustix::fs::fstatfs(&fd)?.f_type;
    if magic != NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a pinned network namespace", path.display()),
        ));
    }
    Ok(fd)
}

/// Whether `path` is a pinned network namespace.
#[must_use]
pub fn is_pinned(path: &Path) -> bool {
    open_pinned(path).is_ok()
}

/// Unpins the namespace at `path` and removes the file. The namespace goes once no
/// thread or descriptor holds it either. A missing path is not an error.
///
/// # Errors
/// The unmount or the removal fail for another reason than absence.
pub fn remove(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        // EINVAL: not a mount point (a half-made pin, or already unmounted).
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Namespaces need CAP_SYS_ADMIN; the tests say so instead of passing silently.
    fn privileged() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[tokio::test]
    async fn a_created_namespace_is_apart_from_the_agents_and_survives_its_thread() {
        assert!(privileged(), "these tests need root (network namespaces)");
        let dir = tempfile::tempdir().expect("test");
        let path = dir.path().join("pod-a");
        let ns = NetNs::create(&path).await.expect("test");
        assert!(is_pinned(&path));
        // A listener on a port the host may use too: the namespaces are apart, so the
        // same port binds in both.
        let host = std::net::TcpListener::bind("127.0.0.1:0").expect("test");
        let port = host.local_addr().expect("test").port();
        let ino =
            |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("test"));
        let inside = ns
            .run(move || ino("/proc/thread-self/ns/net"))
            .await
            .expect("test");
        assert_ne!(inside, ino("/proc/thread-self/ns/net"));
        let any = ns
            .tcp_listener(([0, 0, 0, 0], port).into())
            .await
            .expect("test");
        // Connecting from the host's namespace to that port reaches the host listener,
        // never the pod's.
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("test");
        host.set_nonblocking(true).expect("test");
        any.set_nonblocking(true).expect("test");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(host.accept().is_ok());
        assert!(any.accept().is_err());
        drop(stream);
        drop((ns, any));
        // Pinned still: a second thread enters it again.
        let again = NetNs::open(&path).await.expect("test");
        let inode_a = again
            .run(|| {
                std::fs::metadata("/proc/thread-self/ns/net")
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            })
            .await
            .expect("test")
            .expect("test");
        let inode_pin =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("test"));
        assert_eq!(
            inode_a, inode_pin,
            "the opened thread is in the pinned namespace"
        );
        drop(again);
        remove(&path).expect("test");
        assert!(!path.exists());
        remove(&path).expect("test");
    }

    /// How many of this process's threads are inside the namespace whose `ns/net`
    /// inode is `inode`.
    fn threads_inside(inode: u64) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("test")
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::metadata(task.path().join("ns/net"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == inode)
            })
            .count()
    }

    #[tokio::test]
    async fn blocking_work_in_a_namespace_gets_a_few_threads_however_much_is_asked() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Condvar, Mutex};
        assert!(privileged(), "these tests need root (network namespaces)");
        // The attack: what a guest's many outstanding name lookups or file reads ask of
        // the namespace's runtime, each a `spawn_blocking`. Capped at 64 tasks.
        const TASKS: usize = 64;
        let dir = tempfile::tempdir().expect("test");
        let path = dir.path().join("pod-blocking");
        let ns = NetNs::create(&path).await.expect("test");
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("test"));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let (r, m, rel) = (running.clone(), most.clone(), release.clone());
        let all = ns.handle().spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..TASKS {
                let (r, m, rel) = (r.clone(), m.clone(), rel.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let (lock, cvar) = &*rel;
                    let mut go = lock.lock().expect("test");
                    // Bounded: a task never waits more than 60 s.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while !*go && std::time::Instant::now() < deadline {
                        go = cvar
                            .wait_timeout(go, std::time::Duration::from_millis(100))
                            .expect("test")
                            .0;
                    }
                    r.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            for t in tasks {
                t.await.expect("test");
            }
        });
        // Wait until the pool is busy, give it a while to start more threads if it would,
        // then count the threads inside the namespace.
        let started = std::time::Instant::now();
        while running.load(Ordering::SeqCst) < BLOCKING_THREADS
            && started.elapsed() < std::time::Duration::from_secs(60)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let threads = threads_inside(inode);
        *release.0.lock().expect("test") = true;
        release.1.notify_all();
        all.await.expect("test");
        let most = most.load(Ordering::SeqCst);
        println!("{TASKS} blocking tasks: at most {most} at once, {threads} threads inside");
        assert!(
            most <= BLOCKING_THREADS,
            "{most} blocking tasks ran at once"
        );
        // The runtime's own thread and its blocking pool, nothing more.
        assert!(threads <= 1 + BLOCKING_THREADS, "{threads} threads inside");
        drop(ns);
        remove(&path).expect("test");
    }

    #[tokio::test]
    async fn a_planted_file_or_symlink_is_never_entered_or_overwritten() {
        assert!(privileged(), "these tests need root (network namespaces)");
        let dir = tempfile::tempdir().expect("test");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").expect("test");
        assert!(NetNs::open(&plain).await.is_err());
        // Create refuses an existing path and leaves it as it was.
        assert!(NetNs::create(&plain).await.is_err());
        assert_eq!(std::fs::read(&plain).expect("test"), b"x");
        // A symlink to the agent's own namespace is refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).expect("test");
        assert!(NetNs::open(&link).await.is_err());
        assert!(NetNs::open(&dir.path().join("missing")).await.is_err());
    }
}
