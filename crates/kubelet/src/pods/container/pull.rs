//! Making a container's image available, as the kubelet's image manager does.

use std::time::Duration;

use kube::ResourceExt;
use tokio::time::Instant;

use super::{INITIAL_BACKOFF, MAX_BACKOFF, Supervisor};
use crate::events::EventType;
use crate::keyring::{Credential, Keyring};
use crate::pods::record::Reason;
use crate::pods::spec::pull_policy;
use crate::runtime::{Image, ImageError, ImageStatus, PullPolicy};

/// A duration as Go prints it, truncated to milliseconds: `523ms`, `1.5s`, `1m2.25s`.
#[must_use]
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, rest) = (ms / 60_000, ms % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

impl Supervisor {
    /// The pod's pull credentials that match the image, from its `imagePullSecrets`
    /// (which the API server's ServiceAccount admission fills from the service account).
    async fn credentials(&self, reference: &str) -> Vec<Credential> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let ns = self.pod.namespace().unwrap_or_default();
        let mut ring = Keyring::default();
        let mut missing = Vec::new();
        for name in names {
            match self.ctx.api.secret(&ns, &name).await {
                Ok(Some(secret)) => {
                    if let Err(e) = ring.add_secret(&secret) {
                        tracing::warn!(error = %e, "unusable pull secret");
                        missing.push(name);
                    }
                }
                Ok(None) => {
                    tracing::warn!(secret = %name, "pull secret not found");
                    missing.push(name);
                }
                Err(e) => {
                    tracing::warn!(secret = %name, error = %e, "cannot read pull secret");
                    missing.push(name);
                }
            }
        }
        if !missing.is_empty() {
            let note = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.pod_event(EventType::Warning, "FailedToRetrieveImagePullSecret", note)
                .await;
        }
        ring.lookup(reference)
    }

    /// Records a pulled or present image and returns it.
    fn took(&self, reference: &str, image: Image) -> Image {
        self.ctx
            .images
            .add(reference, &image.image_id, image.size, &image.handle);
        self.ctx
            .images
            .use_image(&self.pod.uid().unwrap_or_default(), &image.handle);
        let id = image.image_id.clone();
        self.shared.update(self.slot, |r| r.image_id = id);
        image
    }

    /// Makes the image available as the kubelet's image manager does, retrying with
    /// back-off; `None` when killed. A present image is used unless the policy is
    /// `Always`, and a private one (pulled with credentials) only by a pod holding one of
    /// those credentials, else it is pulled again so that the registry decides; `Never`
    /// waits (as `ErrImageNeverPull`) until the image appears.
    pub(super) async fn pull(&self) -> Option<Image> {
        let reference = self.spec.image.clone().unwrap_or_default();
        let policy = pull_policy(&self.spec);
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let credentials = self.credentials(&reference).await;
            if policy != PullPolicy::Always {
                let present = tokio::select! {
                    () = self.kill.cancelled() => return None,
                    r = self.ctx.runtime.image_status(&reference) => r,
                };
                let usable = |s: &ImageStatus| {
                    s.pulled_with.is_empty()
                        || credentials.iter().any(|c| s.pulled_with.contains(&c.id()))
                };
                match present {
                    Ok(Some(status)) if usable(&status) => {
                        let note =
                            format!("Container image \"{reference}\" already present on machine");
                        self.defer_pulled(note);
                        return Some(self.took(&reference, status.image));
                    }
                    Err(ImageError::InvalidName(m)) => {
                        if !self
                            .fail_and_wait(
                                "InspectFailed",
                                Reason::InvalidImageName,
                                m,
                                &mut backoff,
                            )
                            .await
                        {
                            return None;
                        }
                        continue;
                    }
                    Ok(_) | Err(_) if policy == PullPolicy::Never => {
                        let m = format!(
                            "Container image \"{reference}\" is not present with pull policy of Never"
                        );
                        let reason = Reason::ErrImageNeverPull;
                        if !self
                            .fail_and_wait(reason.as_str(), reason, m, &mut backoff)
                            .await
                        {
                            return None;
                        }
                        continue;
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            self.event(
                EventType::Normal,
                "Pulling",
                format!("Pulling image \"{reference}\""),
            )
            .await;
            let began = Instant::now();
            let result = tokio::select! {
                () = self.kill.cancelled() => return None,
                r = self.pull_with(&reference, &credentials) => r,
            };
            let message = match result {
                Ok(image) => {
                    let took = go_duration(began.elapsed());
                    let note = format!(
                        "Successfully pulled image \"{reference}\" in {took} ({took} including waiting). Image size: {} bytes.",
                        image.size
                    );
                    self.defer_pulled(note);
                    return Some(self.took(&reference, image));
                }
                Err(ImageError::InvalidName(m) | ImageError::Pull(m)) => m,
            };
            self.event(
                EventType::Warning,
                "Failed",
                format!("Failed to pull image \"{reference}\": {message}"),
            )
            .await;
            self.event(
                EventType::Warning,
                "Failed",
                "Error: ErrImagePull".to_owned(),
            )
            .await;
            self.set_waiting(Reason::ErrImagePull, Some(message.clone()));
            // The kubelet shows the failure, then ImagePullBackOff while it waits.
            if !self.sleep(Duration::from_secs(1)).await {
                return None;
            }
            let msg = format!("Back-off pulling image \"{reference}\"");
            self.event(EventType::Normal, "BackOff", msg.clone()).await;
            self.set_waiting(
                Reason::ImagePullBackOff,
                Some(format!("{msg}: ErrImagePull: {message}")),
            );
            if !self.sleep(backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One pull: anonymous without credentials, else with each in turn, as the kubelet
    /// tries them, until one works; every error when none does.
    async fn pull_with(
        &self,
        reference: &str,
        credentials: &[Credential],
    ) -> Result<Image, ImageError> {
        if credentials.is_empty() {
            return self.ctx.runtime.pull_image(reference, None).await;
        }
        let mut errors = Vec::new();
        for c in credentials {
            match self.ctx.runtime.pull_image(reference, Some(c)).await {
                Ok(image) => return Ok(image),
                Err(e @ ImageError::InvalidName(_)) => return Err(e),
                Err(ImageError::Pull(m)) => errors.push(m),
            }
        }
        Err(ImageError::Pull(if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        }))
    }

    /// Records a Warning `event` with `message`, shows the container waiting with
    /// `reason` and the kubelet's `Error: <reason>` event, and waits out the back-off
    /// (doubling it); false when killed.
    async fn fail_and_wait(
        &self,
        event: &str,
        reason: Reason,
        message: String,
        backoff: &mut Duration,
    ) -> bool {
        self.event(EventType::Warning, event, message.clone()).await;
        self.event(EventType::Warning, "Failed", format!("Error: {reason}"))
            .await;
        self.set_waiting(reason, Some(message));
        let waited = self.sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(ms(523)), "523ms");
        assert_eq!(go_duration(Duration::from_micros(1_500_900)), "1.5s");
        assert_eq!(go_duration(ms(2000)), "2s");
        assert_eq!(go_duration(ms(62_250)), "1m2.25s");
        assert_eq!(go_duration(ms(120_000)), "2m0s");
    }
}
