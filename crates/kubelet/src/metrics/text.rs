//! The Prometheus text exposition format (version 0.0.4): one `# HELP` and one `# TYPE`
//! line per family, then its samples; label values escaped; a histogram as cumulative
//! `_bucket{le=...}` lines ending in `+Inf`, then `_sum` and `_count`.

use std::fmt::Write as _;

use super::Histogram;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Any value.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One line of a family: a suffix of its name (`_bucket`, `_sum`, `_count` or none),
/// labels and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Appended to the family's name.
    pub suffix: &'static str,
    /// Label names and values, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample of `value` with no labels.
    #[must_use]
    pub fn new(value: f64) -> Self {
        Self {
            suffix: "",
            labels: Vec::new(),
            value,
        }
    }

    /// The same sample with label `name="value"` added.
    #[must_use]
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Its name.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// A counter family.
    #[must_use]
    pub fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, Kind::Counter)
    }

    /// A gauge family.
    #[must_use]
    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, Kind::Gauge)
    }

    /// A histogram family.
    #[must_use]
    pub fn histogram(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, Kind::Histogram)
    }

    /// The same family with `sample` added.
    #[must_use]
    pub fn with(mut self, sample: Sample) -> Self {
        self.samples.push(sample);
        self
    }

    /// Adds histogram `h` with `labels`: cumulative buckets, `+Inf`, sum and count.
    pub fn add_histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) {
        let base: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut cumulative = 0u64;
        let bucket = |le: String, n: u64| {
            let mut labels = base.clone();
            labels.push(("le".to_owned(), le));
            Sample {
                suffix: "_bucket",
                labels,
                value: super::count64(n),
            }
        };
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            self.samples.push(bucket(number(*bound), cumulative));
        }
        self.samples.push(bucket("+Inf".to_owned(), h.count()));
        self.samples.push(Sample {
            suffix: "_sum",
            labels: base.clone(),
            value: h.sum,
        });
        self.samples.push(Sample {
            suffix: "_count",
            labels: base,
            value: super::count64(h.count()),
        });
    }
}

/// A number as Prometheus writes it (`+Inf`, `-Inf`, `NaN`, else Rust's shortest form).
#[must_use]
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        let sign = if v > 0.0 { "+" } else { "-" };
        format!("{sign}Inf")
    } else {
        format!("{v}")
    }
}

/// A label value escaped: backslash, double quote and line feed.
#[must_use]
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text escaped: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes `families` to `out`.
pub fn write(out: &mut String, families: &[Family]) {
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            let _ = write!(out, "{}{}", f.name, s.suffix);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", number(s.value));
        }
    }
}
