//! A pod's resolver configuration as a resolv.conf states it, read and written by glibc's
//! rules.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// Largest resolv.conf text [`ResolvConf::parse`] reads (64 KiB).
pub const MAX_RESOLV_CONF: usize = 64 * 1024;
/// Nameservers glibc asks; further `nameserver` lines are kept but not asked.
pub const MAX_NAMESERVERS: usize = 3;
/// Highest `ndots` glibc accepts (`RES_MAXNDOTS`); larger values are lowered to it.
pub const MAX_NDOTS: u8 = 15;
/// Longest `timeout` glibc accepts (`RES_MAXRETRANS`, seconds).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Most `attempts` glibc accepts (`RES_MAXRETRY`).
pub const MAX_ATTEMPTS: u8 = 5;

/// A resolv.conf that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// Longer than [`MAX_RESOLV_CONF`].
    #[error("resolv.conf is {0} bytes, more than the 65536 read")]
    TooLarge(usize),
}

/// The `options` of a resolv.conf. Defaults are glibc's: `ndots:1`, `timeout:5`,
/// `attempts:2`, every flag off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// A name with at least this many dots is first asked as it is, before the search
    /// list (the kubelet sets 5 for cluster pods).
    pub ndots: u8,
    /// How long one query waits for one server. resolv.conf states whole seconds, from
    /// 1 to 30; a shorter one may be set here directly.
    pub timeout: Duration,
    /// Rounds over the nameservers, 1 to 5.
    pub attempts: u8,
    /// `rotate`: each lookup starts with the next nameserver.
    pub rotate: bool,
    /// `single-request`: the A and AAAA queries one after the other, not together.
    pub single_request: bool,
    /// `use-vc`: every query over TCP.
    pub use_vc: bool,
    /// `edns0`: queries carry an EDNS0 record advertising 1232-byte UDP answers.
    pub edns0: bool,
    /// `no-aaaa`: no AAAA queries (glibc 2.36), IPv4 addresses only.
    pub no_aaaa: bool,
    /// Options the resolver does not act upon, kept as written for [`ResolvConf::render`].
    pub other: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
            single_request: false,
            use_vc: false,
            edns0: false,
            no_aaaa: false,
            other: Vec::new(),
        }
    }
}

impl Options {
    /// Applies one word of an `options` line, leniently as glibc does: a value is read
    /// from its leading digits and bounded; a word without a usable value is ignored.
    pub fn apply(&mut self, word: &str) {
        let (key, value) = match word.split_once(':') {
            Some((key, value)) => (key, leading_number(value)),
            None => (word, None),
        };
        match (key, value) {
            ("ndots", Some(n)) => self.ndots = n.min(u32::from(MAX_NDOTS)) as u8,
            ("timeout", Some(n)) => self.timeout = Duration::from_secs(n.clamp(1, 30).into()),
            ("attempts", Some(n)) => self.attempts = n.clamp(1, u32::from(MAX_ATTEMPTS)) as u8,
            ("ndots" | "timeout" | "attempts", None) => {}
            ("rotate", _) => self.rotate = true,
            ("single-request", _) => self.single_request = true,
            ("use-vc", _) => self.use_vc = true,
            ("edns0", _) => self.edns0 = true,
            ("no-aaaa", _) => self.no_aaaa = true,
            _ => self.other.push(word.to_owned()),
        }
    }

    /// The option words that differ from the defaults, in resolv.conf's spelling.
    pub fn words(&self) -> Vec<String> {
        let defaults = Options::default();
        let mut words = Vec::new();
        if self.ndots != defaults.ndots {
            words.push(format!("ndots:{}", self.ndots));
        }
        if self.timeout != defaults.timeout {
            let secs = self.timeout.as_millis().div_ceil(1000).clamp(1, 30);
            words.push(format!("timeout:{secs}"));
        }
        if self.attempts != defaults.attempts {
            words.push(format!("attempts:{}", self.attempts));
        }
        let flags = [
            (self.rotate, "rotate"),
            (self.single_request, "single-request"),
            (self.use_vc, "use-vc"),
            (self.edns0, "edns0"),
            (self.no_aaaa, "no-aaaa"),
        ];
        words.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, w)| (*w).to_owned()),
        );
        words.extend(self.other.iter().cloned());
        words
    }
}

/// The digits at the start of `value` as a number (saturating), as C's `atoi` reads it
/// without the sign; `None` when it starts with no digit.
fn leading_number(value: &str) -> Option<u32> {
    let digits = value.bytes().take_while(u8::is_ascii_digit);
    let mut number: Option<u32> = None;
    for digit in digits {
        let n = number.unwrap_or(0);
        number = Some(n.saturating_mul(10).saturating_add(u32::from(digit - b'0')));
    }
    number
}

/// A pod's resolver configuration: what its resolv.conf would say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Every `nameserver` read, in order; the resolver asks the first
    /// [`MAX_NAMESERVERS`].
    pub nameservers: Vec<IpAddr>,
    /// The search list: of the last `search` or `domain` line.
    pub searches: Vec<String>,
    /// The `options` lines, all of them applied in order.
    pub options: Options,
}

impl ResolvConf {
    /// Reads a resolv.conf as glibc does: lines starting with `;` or `#` are comments,
    /// the last `search` or `domain` line wins, `options` lines add up, a nameserver that
    /// is no IP address (or has a `%zone`) is skipped, unknown keywords are ignored.
    ///
    /// # Errors
    /// [`ConfError::TooLarge`] for a text longer than [`MAX_RESOLV_CONF`].
    pub fn parse(text: &str) -> Result<Self, ConfError> {
        if text.len() > MAX_RESOLV_CONF {
            return Err(ConfError::TooLarge(text.len()));
        }
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            conf.apply_line(line);
        }
        Ok(conf)
    }

    fn apply_line(&mut self, line: &str) {
        if line.starts_with([';', '#']) {
            return;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    self.nameservers.push(ip);
                }
            }
            Some("domain") => {
                if let Some(domain) = words.next() {
                    self.searches = vec![domain.to_owned()];
                }
            }
            Some("search") => self.searches = words.map(str::to_owned).collect(),
            Some("options") => words.for_each(|w| self.options.apply(w)),
            _ => {}
        }
    }

    /// Writes the configuration as resolv.conf text: the nameservers, the search line
    /// and one `options` line with what differs from the defaults.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for ip in &self.nameservers {
            let _ = writeln!(text, "nameserver {ip}");
        }
        if !self.searches.is_empty() {
            let _ = writeln!(text, "search {}", self.searches.join(" "));
        }
        let words = self.options.words();
        if !words.is_empty() {
            let _ = writeln!(text, "options {}", words.join(" "));
        }
        text
    }
}
