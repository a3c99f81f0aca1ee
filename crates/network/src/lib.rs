//! Pod networks, kept apart from Kubernetes and from wasm:
//!
//! - [`netns`]: a network namespace per pod, pinned by a bind mount so that it outlives
//!   the agent, with one thread inside it on which every socket of the pod is made (a
//!   socket belongs to the namespace of the thread that creates it);
//! - [`cni`]: the CNI plugins of a network configuration list (`--cni-conf-dir`,
//!   `--cni-bin-dir`), run as a container runtime runs them: ADD, CHECK and DEL, with
//!   the result of each ADD cached for the DEL;
//! - [`dns`]: a pod's resolver configuration (resolv.conf, hosts entries) and the stub
//!   resolver that looks names up by it from inside the pod's namespace.

pub mod cni;
pub mod dns;
pub mod netns;

pub use dns::{Hosts, LookupError, LookupErrorKind, ResolvConf, Resolver};
pub use netns::NetNs;
