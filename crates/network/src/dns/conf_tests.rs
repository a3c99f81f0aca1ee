//! resolv.conf read and written by glibc's rules, and hosts entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::{ConfError, Hosts, MAX_RESOLV_CONF, Options, ResolvConf};

fn parse(text: &str) -> ResolvConf {
    ResolvConf::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_kubelet_resolv_conf_is_read() {
    let conf = parse(
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 10.96.0.10\n\
         options ndots:5\n",
    );
    assert_eq!(conf.nameservers, [IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]);
    assert_eq!(
        conf.searches,
        [
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(
        conf.options,
        Options {
            ndots: 5,
            ..Options::default()
        }
    );
}

#[test]
fn the_last_search_or_domain_line_wins_and_comments_are_skipped() {
    let conf = parse("search a b\ndomain c\n# search d\n; search e\n");
    assert_eq!(conf.searches, ["c"]);
    let conf = parse("domain c\nsearch a\tb  \n");
    assert_eq!(conf.searches, ["a", "b"]);
}

#[test]
fn every_nameserver_is_kept_and_bad_ones_are_skipped() {
    let conf = parse(
        "nameserver 10.0.0.1\nnameserver fd00::53\nnameserver not-an-ip\nnameserver fe80::1%eth0\n\
         nameserver 10.0.0.2 trailing\nnameserver\n  nameserver 10.0.0.3\nnameserver 10.0.0.4\n",
    );
    let expected: Vec<IpAddr> = vec![
        Ipv4Addr::new(10, 0, 0, 1).into(),
        "fd00::53"
            .parse::<Ipv6Addr>()
            .map_or(Ipv6Addr::LOCALHOST, |ip| ip)
            .into(),
        Ipv4Addr::new(10, 0, 0, 2).into(),
        Ipv4Addr::new(10, 0, 0, 3).into(),
        Ipv4Addr::new(10, 0, 0, 4).into(),
    ];
    assert_eq!(conf.nameservers, expected);
}

#[test]
fn options_are_read_leniently_and_bounded_as_glibc_does() {
    let conf = parse(
        "options ndots:20 timeout:0 attempts:9 rotate\noptions single-request use-vc edns0 no-aaaa \
         trust-ad ndots:x timeout:\n",
    );
    let options = conf.options;
    assert_eq!(
        (options.ndots, options.timeout, options.attempts),
        (15, Duration::from_secs(1), 5)
    );
    assert!(
        options.rotate
            && options.single_request
            && options.use_vc
            && options.edns0
            && options.no_aaaa
    );
    assert_eq!(options.other, ["trust-ad"]);
    let options = parse("options ndots:3abc timeout:99 attempts:0 ndots:99999999999999").options;
    assert_eq!(
        (options.ndots, options.timeout, options.attempts),
        (15, Duration::from_secs(30), 1)
    );
    assert_eq!(parse("options ndots:0").options.ndots, 0);
    assert_eq!(parse("options ndots:3abc").options.ndots, 3);
}

#[test]
fn unknown_lines_are_ignored_and_a_large_file_is_refused() {
    assert_eq!(
        parse("sortlist 10.0.0.0/8\nlookup file bind\n\n"),
        ResolvConf::default()
    );
    let large = "#".repeat(MAX_RESOLV_CONF + 1);
    assert_eq!(
        ResolvConf::parse(&large),
        Err(ConfError::TooLarge(MAX_RESOLV_CONF + 1))
    );
    assert!(ResolvConf::parse(&large[1..]).is_ok());
}

#[test]
fn render_writes_what_parse_reads() {
    let text = "nameserver 10.96.0.10\nnameserver fd00::a\nsearch ns.svc.cluster.local svc.cluster.local\n\
                options ndots:5 timeout:2 attempts:3 rotate edns0 trust-ad\n";
    let conf = parse(text);
    assert_eq!(conf.render(), text);
    assert_eq!(parse(&conf.render()), conf);
    assert_eq!(ResolvConf::default().render(), "");
    let mut short = ResolvConf::default();
    short.options.timeout = Duration::from_millis(300);
    assert_eq!(short.render(), "options timeout:1\n");
}

#[test]
fn hosts_entries_are_found_in_order_case_insensitively() {
    let mut hosts = Hosts::kubernetes();
    let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5));
    hosts.add(pod, ["web-0", "web-0.web.shop.svc.cluster.local"]);
    hosts.add(
        Ipv4Addr::new(10, 1, 1, 1).into(),
        ["foo.local", "bar.local."],
    );
    hosts.add(Ipv4Addr::new(10, 1, 1, 2).into(), ["Foo.Local"]);
    hosts.add(Ipv4Addr::new(10, 1, 1, 1).into(), ["foo.local"]);
    assert_eq!(hosts.lookup("WEB-0.web.shop.svc.cluster.local."), [pod]);
    let foo: Vec<IpAddr> = vec![
        Ipv4Addr::new(10, 1, 1, 1).into(),
        Ipv4Addr::new(10, 1, 1, 2).into(),
    ];
    assert_eq!(hosts.lookup("foo.local"), foo);
    assert_eq!(hosts.lookup("bar.local"), foo[..1]);
    assert_eq!(
        hosts.lookup("ip6-allrouters"),
        ["fe00::2".parse::<IpAddr>().unwrap_or(pod)]
    );
    assert!(hosts.lookup("web").is_empty());
    assert!(Hosts::new().lookup("localhost").is_empty());
}

#[test]
fn hosts_render_as_a_hosts_file() {
    let mut hosts = Hosts::new();
    hosts.add(Ipv4Addr::LOCALHOST.into(), ["localhost"]);
    hosts.add(Ipv6Addr::LOCALHOST.into(), ["localhost", "ip6-localhost"]);
    assert_eq!(
        hosts.render(),
        "127.0.0.1\tlocalhost\n::1\tlocalhost\tip6-localhost\n"
    );
}
