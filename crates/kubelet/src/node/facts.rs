//! The host as the node reports it: facts read once at the start and kept (CPUs,
//! memory, host name, boot and machine ids, kernel and OS), and the data dir's
//! filesystem, measured off the async threads for each status report.

use std::path::Path;
use std::sync::OnceLock;

/// What the node reports of its host that does not change while the agent runs. Read
/// once ([`host_facts`]) and kept, instead of from `/proc` and `/etc` for every status
/// report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs this process may use.
    pub cpus: u64,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory: u64,
    /// The kernel's host name: the node's `Hostname` address.
    pub hostname: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/etc/machine-id` (also the system UUID).
    pub machine_id: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release`, `unknown` without one.
    pub os_image: String,
}

impl HostFacts {
    /// Reads the facts from the files under `root` (`/` on a node); what cannot be read
    /// is empty (0, `unknown` for the OS image).
    fn read(root: &Path) -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory: read("proc/meminfo")
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024),
            hostname: read("proc/sys/kernel/hostname"),
            boot_id: read("proc/sys/kernel/random/boot_id"),
            machine_id: read("etc/machine-id"),
            kernel_version: read("proc/sys/kernel/osrelease"),
            os_image: read("etc/os-release")
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map_or_else(|| "unknown".to_owned(), |v| v.trim_matches('"').to_owned()),
        }
    }
}

static HOST_FACTS: OnceLock<HostFacts> = OnceLock::new();

/// This host's [`HostFacts`]: read by the first call (a few small files), then kept.
pub fn host_facts() -> &'static HostFacts {
    HOST_FACTS.get_or_init(|| HostFacts::read(Path::new("/")))
}

/// [`host_facts`], the first read done on a blocking thread.
pub async fn load_host_facts() -> &'static HostFacts {
    if let Some(facts) = HOST_FACTS.get() {
        return facts;
    }
    crate::blocking::run(host_facts)
        .await
        .unwrap_or_else(|_| host_facts())
}

/// The host as one status report gives it: the facts kept since the start and the size
/// of the data dir's filesystem, measured for the report.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// The facts.
    pub facts: &'a HostFacts,
    /// Bytes of the filesystem holding the data dir (`ephemeral-storage`).
    pub data_fs_bytes: u64,
}

impl Host<'static> {
    /// Measures the host for a status report, off the async threads.
    pub async fn measure(data_dir: &Path) -> Self {
        let facts = load_host_facts().await;
        let dir = data_dir.to_owned();
        let data_fs_bytes =
            crate::blocking::run(move || crate::eviction::filesystem_capacity(&dir))
                .await
                .unwrap_or(0);
        Self {
            facts,
            data_fs_bytes,
        }
    }
}

/// `MemTotal` in bytes, from the [`host_facts`].
pub(crate) fn memory_bytes() -> u64 {
    host_facts().memory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_read_from_their_files() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(root.path()))?;
            std::fs::write(path, text)
        };
        write(
            "proc/meminfo",
            "MemTotal:        2048 kB\nMemFree:  1024 kB\n",
        )?;
        write("proc/sys/kernel/hostname", "host-a\n")?;
        write("proc/sys/kernel/random/boot_id", "boot\n")?;
        write("proc/sys/kernel/osrelease", "6.12.0\n")?;
        write("etc/machine-id", "machine\n")?;
        write(
            "etc/os-release",
            "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n",
        )?;
        let facts = HostFacts::read(root.path());
        assert_eq!(
            facts,
            HostFacts {
                cpus: facts.cpus,
                memory: 2048 * 1024,
                hostname: "host-a".to_owned(),
                boot_id: "boot".to_owned(),
                machine_id: "machine".to_owned(),
                kernel_version: "6.12.0".to_owned(),
                os_image: "Debian GNU/Linux 13 (trixie)".to_owned(),
            }
        );
        assert!(facts.cpus >= 1);
        let none = HostFacts::read(&root.path().join("nothing"));
        assert_eq!((none.memory, none.os_image.as_str()), (0, "unknown"));
        assert!(none.hostname.is_empty() && none.kernel_version.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn host_facts_are_read_once_and_kept() {
        let first = load_host_facts().await;
        assert!(std::ptr::eq(first, host_facts()));
        assert!(std::ptr::eq(first, load_host_facts().await));
        assert_eq!(memory_bytes(), first.memory);
    }
}
