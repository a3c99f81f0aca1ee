//! Renewal before expiry, as client-go's certificate manager does it: a deadline at a
//! random point between 70 % and 90 % of the certificate's lifetime, then a new key and
//! CSR; the new certificate replaces the old one in the [`Slot`] (and in the cert dir).
//! A failed renewal is retried with back-off; the old certificate is used meanwhile,
//! until it expires.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::connector::Connections;
use super::request::{self, Issued};
use super::{Error, Kind, Result, Slot, Template, blocking, signing, store};

/// The first wait after a failed renewal; doubled at each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between renewal attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How long after its client certificate expired the node agent gives up (the kubelet's
/// 5 minutes before it exits to bootstrap again).
pub const GIVE_UP_AFTER_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// When a certificate valid from `not_before` to `not_after` is renewed: after 70 % of its
/// lifetime plus `jitter` (in `[0, 1)`) times 20 % of it, as client-go's
/// `nextRotationDeadline` (`wait.Jitter(total, 0.2) - 0.3 × total` after `notBefore`).
#[must_use]
pub fn deadline(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = 0.7 + 0.2 * jitter.clamp(0.0, 1.0);
    not_before + total.mul_f64(fraction)
}

/// A uniformly random number in `[0, 1)` from the system's secure random source (0.5 if it
/// fails).
#[must_use]
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    match rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
    {
        // 53 random bits: every such f64 in [0, 1) exactly.
        #[allow(clippy::cast_precision_loss)]
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// Whether a node whose `kind` certificate ended at `not_after` and could not be renewed
/// gives up at `now`: only for the client certificate, [`GIVE_UP_AFTER_EXPIRY`] after.
#[must_use]
pub fn give_up(kind: Kind, not_after: SystemTime, now: SystemTime) -> bool {
    kind == Kind::Client && now > not_after + GIVE_UP_AFTER_EXPIRY
}

/// The current certificate of `template`'s kind in `cert_dir`, if there is a usable one
/// (logged when there is one that is not).
pub async fn load_current(cert_dir: PathBuf, template: &Template) -> Option<Issued> {
    let kind = template.kind;
    let template = template.clone();
    let loaded = blocking(move || {
        store::read_current(&cert_dir, kind)?
            .map(|pem| request::from_pem(&pem, &template, SystemTime::now()))
            .transpose()
    })
    .await;
    match loaded {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "the {} in the cert dir is not usable", kind.describe());
            None
        }
    }
}

/// Renews one of the node's certificates for as long as the node runs.
pub struct Rotator {
    /// What the certificate must say.
    pub template: Template,
    /// The client the CSRs are made with (the node's own).
    pub client: kube::Client,
    /// Where the certificate in use is swapped.
    pub slot: Arc<Slot>,
    /// Where certificates are written.
    pub cert_dir: PathBuf,
    /// The certificate in use; none yet (a serving certificate not yet issued): one is
    /// requested at once.
    pub current: Option<Issued>,
    /// Connections to close after a renewal (the API client's).
    pub connections: Option<Connections>,
    /// How long one CSR is waited on.
    pub wait: Duration,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("template", &self.template)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Rotator {
    /// Renews at each deadline until `shutdown`.
    ///
    /// # Errors
    /// [`Error::Expired`] when the client certificate has been expired for
    /// [`GIVE_UP_AFTER_EXPIRY`] and still cannot be renewed: as the kubelet exits then,
    /// so that a restart bootstraps again. A serving certificate is tried for ever.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let what = self.template.kind.describe();
        loop {
            if let Some(current) = &self.current {
                let at = deadline(current.not_before, current.not_after, jitter());
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(
                    expires = %jiff::Timestamp::try_from(current.not_after).unwrap_or_default(),
                    rotation_in = ?wait,
                    "{what}: next rotation scheduled"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let mut backoff = FIRST_BACKOFF;
            loop {
                let renewed = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    r = self.renew() => r,
                };
                match renewed {
                    Ok(issued) => {
                        let done = if self.current.is_some() {
                            "rotated"
                        } else {
                            "issued"
                        };
                        tracing::info!(
                            expires = %jiff::Timestamp::try_from(issued.not_after).unwrap_or_default(),
                            "{what} {done}"
                        );
                        self.current = Some(issued);
                        break;
                    }
                    Err(e) => {
                        let expired = self
                            .current
                            .as_ref()
                            .is_none_or(|c| !c.valid_at(SystemTime::now()));
                        if let Some(since) = self.given_up() {
                            return Err(Error::Expired {
                                what: what.to_owned(),
                                since,
                            });
                        }
                        if expired {
                            tracing::error!(error = %e, retry_in = ?backoff, "{what}: none valid, and renewing failed");
                        } else {
                            tracing::warn!(error = %e, retry_in = ?backoff, "{what}: renewing failed; the current one is kept");
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// When the client certificate expired, if that was [`GIVE_UP_AFTER_EXPIRY`] ago.
    fn given_up(&self) -> Option<jiff::Timestamp> {
        let current = self.current.as_ref()?;
        give_up(self.template.kind, current.not_after, SystemTime::now())
            .then(|| jiff::Timestamp::try_from(current.not_after).unwrap_or_default())
    }

    /// One renewal: key, CSR, wait, check, write, swap.
    async fn renew(&self) -> Result<Issued> {
        let request = request::generate(&self.template)?;
        let pem = signing::request(
            &self.client,
            &self.template,
            &request.csr_pem,
            "csr-",
            self.wait,
        )
        .await?;
        let issued = request::validate(&pem, &request.key, &self.template, SystemTime::now())?;
        let (dir, kind, content) = (
            self.cert_dir.clone(),
            self.template.kind,
            issued.pem.clone(),
        );
        blocking(move || store::write(&dir, kind, &content, jiff::Timestamp::now())).await?;
        self.slot.set(issued.certified.clone());
        if let Some(connections) = &self.connections {
            // As the kubelet: every request from now on is made with the new certificate.
            connections.close_all();
        }
        if kind == Kind::Serving {
            tracing::info!("the kubelet API serves the new certificate from the next handshake");
        }
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn the_deadline_falls_between_70_and_90_percent_of_the_lifetime() {
        let (start, end) = (at(1_000), at(1_000 + 240));
        assert_eq!(deadline(start, end, 0.0), at(1_000 + 168));
        assert_eq!(deadline(start, end, 0.5), at(1_000 + 192));
        let last = deadline(start, end, 0.999_999);
        assert!(last < at(1_000 + 216) && last > at(1_000 + 215));
        // Out-of-range jitter is clamped; a certificate ending before it starts is due now.
        assert_eq!(deadline(start, end, 7.0), at(1_000 + 216));
        assert_eq!(deadline(end, start, 0.3), end);
    }

    #[test]
    fn only_a_client_certificate_expired_for_five_minutes_is_given_up() {
        let end = at(10_000);
        assert!(!give_up(Kind::Client, end, at(10_000 + 299)));
        assert!(give_up(Kind::Client, end, at(10_000 + 301)));
        assert!(!give_up(Kind::Serving, end, at(10_000 + 3_600)));
    }

    #[test]
    fn jitter_is_uniform_enough_in_its_range() {
        let samples: Vec<f64> = (0..2_000).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        let low = samples.iter().filter(|j| **j < 0.5).count();
        assert!((800..1_200).contains(&low), "{low} of 2000 below 0.5");
        let (start, end) = (at(0), at(1_000_000));
        for j in samples {
            let d = deadline(start, end, j);
            assert!(d >= at(700_000) && d < at(900_000), "{d:?}");
        }
    }
}
