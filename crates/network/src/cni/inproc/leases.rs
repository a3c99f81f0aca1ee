//! Addresses leased the way the `host-local` IPAM plugin leases them, in its own files,
//! so that the plugin and the agent can share one pool (a pod with host ports still
//! execs the plugins) and a restarted agent finds every lease:
//! - `<dataDir>/<network>/<ip>` holds `<container ID>\r\n<interface>`;
//! - `<dataDir>/<network>/last_reserved_ip.<range set>` the last address handed out, where
//!   the next search starts (round robin, so a freed address is not reused at once);
//! - `<dataDir>/<network>/lock`, locked (`flock`) for each allocation and release.
//!
//! A range is a subnet's hosts but its network and broadcast addresses and its gateway
//! (the first host), as host-local's defaults have it.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Its network address.
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n` (host bits are cleared). `None` for anything else, IPv6
    /// included.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        Some(Self {
            network: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        })
    }

    /// The gateway: the first host.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The first and last address a pod may get.
    fn hosts(&self) -> Option<(u32, u32)> {
        if self.prefix > 30 {
            return None;
        }
        let first = u32::from(self.network) + 1;
        let last = (u32::from(self.network) | !mask(self.prefix)) - 1;
        Some((first, last))
    }

    /// Whether `ip` is inside.
    #[must_use]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The leases of one network.
#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    /// The leases of `network` under `data_dir`.
    #[must_use]
    pub fn new(data_dir: &Path, network: &str) -> Self {
        Self {
            dir: data_dir.join(network),
        }
    }

    fn lock(&self) -> io::Result<OwnedFd> {
        std::fs::create_dir_all(&self.dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o750)
            .open(self.dir.join("lock"))?;
        let fd = OwnedFd::from(file);
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
        Ok(fd)
    }

    fn owner(id: &str, if_name: &str) -> String {
        format!("{id}\r\n{if_name}")
    }

    /// The address `id`'s `if_name` holds in `subnet`, or a free one, leased now. Blocks
    /// on the lock.
    ///
    /// # Errors
    /// No free address is left, or the files cannot be read or written.
    pub fn reserve(&self, id: &str, if_name: &str, subnet: Subnet) -> io::Result<Ipv4Addr> {
        let _lock = self.lock()?;
        if let Some(ip) = self
            .held(id, if_name)?
            .into_iter()
            .find(|ip| subnet.contains(*ip))
        {
            return Ok(ip);
        }
        let (first, last) = subnet.hosts().ok_or_else(|| exhausted(subnet))?;
        let last_reserved = self.dir.join("last_reserved_ip.0");
        let start = std::fs::read_to_string(&last_reserved)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        let gateway = u32::from(subnet.gateway());
        let owner = Self::owner(id, if_name);
        let span = last - first + 1;
        for step in 0..span {
            let ip = first + (start - first + step) % span;
            if ip == gateway {
                continue;
            }
            let ip = Ipv4Addr::from(ip);
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(ip.to_string()));
            match created {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    write_file(&last_reserved, ip.to_string().as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(exhausted(subnet))
    }

    /// Frees what `id`'s `if_name` holds. Nothing held is not an error.
    ///
    /// # Errors
    /// The files cannot be read or removed.
    pub fn release(&self, id: &str, if_name: &str) -> io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        for ip in self.held(id, if_name)? {
            match std::fs::remove_file(self.dir.join(ip.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The addresses leased to `id`'s `if_name` (host-local's older files hold the ID
    /// alone).
    fn held(&self, id: &str, if_name: &str) -> io::Result<Vec<Ipv4Addr>> {
        let owner = Self::owner(id, if_name);
        let mut held = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let content = content.trim();
            if content == owner || content == id {
                held.push(ip);
            }
        }
        Ok(held)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn exhausted(subnet: Subnet) -> io::Error {
    io::Error::other(format!(
        "no IP addresses available in range set: {}/{}",
        subnet.network, subnet.prefix
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        Subnet::parse(s).expect("test")
    }

    #[test]
    fn subnets_parse_and_clear_host_bits() {
        assert_eq!(subnet("10.1.2.77/24").network, Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(subnet("10.1.2.0/24").gateway(), Ipv4Addr::new(10, 1, 2, 1));
        assert!(Subnet::parse("fd00::/64").is_none());
        assert!(Subnet::parse("10.0.0.0/33").is_none());
        assert!(subnet("10.244.240.0/20").contains(Ipv4Addr::new(10, 244, 255, 254)));
        assert!(!subnet("10.244.240.0/20").contains(Ipv4Addr::new(10, 245, 0, 1)));
    }

    #[test]
    fn leases_go_round_robin_skip_the_gateway_and_are_kept_by_owner() {
        let dir = tempfile::tempdir().expect("test");
        let leases = Leases::new(dir.path(), "net");
        let net = subnet("10.9.0.0/29"); // hosts .1 (gateway) to .6
        let a = leases.reserve("a", "eth0", net).expect("test");
        let b = leases.reserve("b", "eth0", net).expect("test");
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3))
        );
        // The same owner again gets what it holds.
        assert_eq!(leases.reserve("a", "eth0", net).expect("test"), a);
        // host-local's files, byte for byte.
        let file = std::fs::read(dir.path().join("net/10.9.0.2")).expect("test");
        assert_eq!(file, b"a\r\neth0");
        let last = std::fs::read(dir.path().join("net/last_reserved_ip.0")).expect("test");
        assert_eq!(last, b"10.9.0.3");
        // A freed address is not handed out again until the range wrapped.
        leases.release("a", "eth0").expect("test");
        let c = leases.reserve("c", "eth0", net).expect("test");
        assert_eq!(c, Ipv4Addr::new(10, 9, 0, 4));
        for id in ["d", "e"] {
            leases.reserve(id, "eth0", net).expect("test");
        }
        // .2 is free again, then the range is full.
        assert_eq!(leases.reserve("f", "eth0", net).expect("test"), a);
        let full = leases.reserve("g", "eth0", net).expect_err("test");
        assert!(
            full.to_string().contains("no IP addresses available"),
            "{full}"
        );
        // Releasing what is not held, or in a directory never made, is no error.
        leases.release("nobody", "eth0").expect("test");
        Leases::new(dir.path(), "other")
            .release("a", "eth0")
            .expect("test");
    }
}
