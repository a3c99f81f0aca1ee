//! The kubelet API's listening address (`--address`): all addresses by default, as the
//! kubelet's, but loopback in standalone mode when anonymous requests are served with
//! `AlwaysAllow` (anyone reaching the port could do anything), unless told otherwise.

use std::net::{IpAddr, Ipv4Addr};

use crate::NodeArgs;

/// Whether the node runs without an API server (no kubeconfig of any kind), as the
/// kubelet without `--kubeconfig`.
pub(crate) fn standalone(args: &NodeArgs) -> bool {
    args.kubeconfig.is_none() && args.bootstrap_kubeconfig.is_none()
}

/// Whether anyone who reaches the kubelet API may do anything there: standalone mode
/// (no API server to ask) serving anonymous requests with `AlwaysAllow`.
pub(crate) fn wide_open(args: &NodeArgs) -> bool {
    standalone(args)
        && args.anonymous_auth
        && args.authorization_mode == kubelet::auth::AuthorizationMode::AlwaysAllow
}

/// Where the kubelet API listens: `--address` when given (flag, environment or file);
/// else all addresses, as the kubelet's default, but loopback when [`wide_open`] (the
/// kubelet has no such exception). A wide-open API on another address is warned of.
pub(crate) fn listen_address(args: &NodeArgs) -> IpAddr {
    let address = match args.address {
        Some(address) => address,
        None if wide_open(args) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    if wide_open(args) && !address.is_loopback() {
        tracing::warn!(
            %address,
            "the kubelet API serves anonymous requests with AlwaysAllow on a non-loopback \
             address: anyone who reaches it may read logs and run port forwards"
        );
    }
    address
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::Cli;

    fn resolved(flags: &[&str]) -> IpAddr {
        let matches = Cli::command()
            .try_get_matches_from(flags)
            .expect("valid flags");
        let cli = Cli::from_arg_matches(&matches).expect("valid flags");
        listen_address(&cli.node)
    }

    const OPEN: &[&str] = &[
        "krustlet",
        "--pod-manifest-path",
        "/m",
        "--anonymous-auth",
        "--authorization-mode",
        "AlwaysAllow",
    ];

    #[test]
    fn standalone_anonymous_always_allow_listens_on_loopback_unless_told() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let all = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(resolved(OPEN), loopback);
        // Said outright, all addresses it is (with a warning at start).
        assert_eq!(resolved(&[OPEN, &["--address", "0.0.0.0"]].concat()), all);
        assert_eq!(
            resolved(&[OPEN, &["--address", "10.1.2.3"]].concat()),
            IpAddr::from([10, 1, 2, 3])
        );
        // Requests need credentials (a client certificate): the kubelet's default.
        assert_eq!(
            resolved(&[
                "krustlet",
                "--pod-manifest-path",
                "/m",
                "--authorization-mode",
                "AlwaysAllow",
                "--client-ca-file",
                "/ca.pem"
            ]),
            all
        );
        // With an API server, which reaches the node's address for logs and the like.
        assert_eq!(resolved(&[OPEN, &["--kubeconfig", "/kc"]].concat()), all);
        assert_eq!(resolved(&["krustlet"]), all);
    }
}
