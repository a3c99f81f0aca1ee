//! One run of a container: its environment, mounts and termination file, the start,
//! the wait, and the terminated state.

use kube::ResourceExt;

use super::{Run, Supervisor};
use crate::events::EventType;
use crate::now;

/// The reason of the Warning event for a connection the pod's allowed outbound hosts
/// refused (krustlet's own: the kubelet has no such annotation).
pub(crate) const OUTBOUND_REFUSED: &str = "OutboundConnectionRefused";
use crate::pods::record::{Reason, State, Terminated};
use crate::pods::spec::{
    cpu_resources, expand, host_network, instance_reuse, memory_limit, request_timeout,
};
use crate::pods::termination;
use crate::runtime::{ContainerRun, Image};

impl Supervisor {
    /// The kubelet's `CreateContainerConfigError`: the event, the waiting reason.
    async fn config_error(&self, message: String) -> Run {
        self.record_pulled().await;
        self.event(EventType::Warning, "Failed", format!("Error: {message}"))
            .await;
        self.set_waiting(Reason::CreateContainerConfigError, Some(message));
        Run::NotStarted
    }

    /// The pod's address, `status.podIP`: its sandbox's, the node's for a `hostNetwork`
    /// pod, none for a pod without a network of its own (a node without a pod network):
    /// such a pod must not pass for the node, or a Service selecting it would send its
    /// traffic, and its probes, to the node's own ports.
    fn pod_ip(&self) -> Option<std::net::IpAddr> {
        let sandbox = self.shared.sandbox.get()?;
        match sandbox.ips.first() {
            Some(ip) => Some(*ip),
            None => host_network(&self.pod).then_some(self.ctx.config.node_ip),
        }
    }

    /// argv and the environment; the kubelet's error when a source is missing.
    async fn argv_env(
        &self,
    ) -> Result<(Vec<String>, Vec<(String, String)>), crate::pods::env::EnvError> {
        let mut facts = self.ctx.facts;
        facts.pod_ip = self.pod_ip();
        let (env, invalid) =
            crate::pods::env::resolve(&*self.ctx.api, &self.pod, &self.spec, &facts).await?;
        for message in invalid {
            self.event(
                EventType::Warning,
                "InvalidEnvironmentVariableNames",
                message,
            )
            .await;
        }
        let mut argv: Vec<String> = self.spec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(self.spec.name.clone());
        }
        argv.extend(self.spec.args.iter().flatten().cloned());
        let argv = argv.iter().map(|a| expand(a, &env)).collect();
        Ok((argv, env))
    }

    /// One run; `None` when the container could not be started (it is then waiting
    /// with the reason and the pod worker decides) or was killed before starting. A
    /// `restarting` run counts as a restart once it runs, as the kubelet counts them.
    pub(super) async fn run_once(&self, image: &Image, restarting: bool) -> Run {
        let restart_count =
            self.shared.get(self.slot).map_or(0, |r| r.restart_count) + i32::from(restarting);
        let dir = self.ctx.pod_dir(&self.pod).join(&self.spec.name);
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            self.record_pulled().await;
            self.set_waiting(
                Reason::CreateContainerError,
                Some(format!("cannot create log directory: {e}")),
            );
            return Run::NotStarted;
        }
        let (args, env) = match self.argv_env().await {
            Ok(found) => found,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let memory_limit = match memory_limit(&self.spec) {
            Ok(limit) => limit,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let cpu = match cpu_resources(&self.spec) {
            Ok(cpu) => cpu,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let request_timeout = match request_timeout(&self.pod) {
            Ok(limit) => limit,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let reuse = match instance_reuse(&self.pod) {
            Ok(reuse) => reuse,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let volumes = self.shared.volumes.get().cloned();
        let mounts = match &volumes {
            Some(v) => v.mounts(&self.spec, &env).await,
            None => Ok(Vec::new()),
        };
        let mut mounts = match mounts {
            Ok(mounts) => mounts,
            Err(e) => return self.config_error(e.to_string()).await,
        };
        let term_dir = dir.join(format!("{restart_count}.termination"));
        let (term_mount, term_file) = match termination::prepare(&self.spec, &term_dir).await {
            Ok(t) => t,
            Err(e) => {
                self.record_pulled().await;
                self.set_waiting(
                    Reason::CreateContainerError,
                    Some(format!("cannot prepare the termination message file: {e}")),
                );
                return Run::NotStarted;
            }
        };
        mounts.push(term_mount);
        let log_path = dir.join(format!("{restart_count}.log"));
        let old_runs = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::logs::remove_old_runs(&old_runs, restart_count - 1)
        })
        .await;
        let Some(sandbox) = self.shared.sandbox.get() else {
            return Run::NotStarted;
        };
        let ports = self
            .spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        let allowed_outbound = self
            .pod
            .annotations()
            .get(crate::runtime::ALLOWED_OUTBOUND_HOSTS)
            .cloned();
        // Each refusal is a Warning event on the container (the recorder's spam filter
        // bounds a flood); the forwarder ends when the runtime drops the sender.
        let outbound_refused = allowed_outbound.as_ref().map(|_| {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<String>(crate::runtime::OUTBOUND_REFUSED_QUEUE);
            let recorder = self.ctx.recorder.clone();
            let object = super::reference(
                &self.pod,
                Some(super::field_path(self.slot.init, &self.spec.name)),
            );
            let name = self.spec.name.clone();
            tokio::spawn(async move {
                while let Some(what) = rx.recv().await {
                    let note = format!(
                        "Container {name}: connection to {what} refused by the pod's {} annotation",
                        crate::runtime::ALLOWED_OUTBOUND_HOSTS
                    );
                    recorder
                        .record(&object, EventType::Warning, OUTBOUND_REFUSED, &note)
                        .await;
                }
            });
            tx
        });
        let run = ContainerRun {
            sandbox_id: sandbox.id.clone(),
            ports,
            allowed_outbound,
            outbound_refused,
            request_timeout,
            reuse,
            name: self.spec.name.clone(),
            attempt: u32::try_from(restart_count).unwrap_or_default(),
            image: image.clone(),
            args,
            env,
            log_path: log_path.clone(),
            mounts,
            memory_limit,
            cpu,
        };
        let (ns, pod_name) = (
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any(),
        );
        // Deletion, a deadline or node shutdown wins over a start that does not end (a
        // module that compiles for long): the runtime drops that start's work.
        let started = tokio::select! {
            started = self.ctx.runtime.start_container(run) => started,
            () = self.kill.cancelled() => return Run::NotStarted,
        };
        let handle = match started {
            Ok(h) => h,
            Err(message) => {
                self.record_pulled().await;
                self.event(EventType::Warning, "Failed", format!("Error: {message}"))
                    .await;
                self.set_waiting(Reason::CreateContainerError, Some(message));
                return Run::NotStarted;
            }
        };
        let container_id = handle.id().to_owned();
        let started_at = now();
        // Its usage is reported while it runs (the resource endpoints).
        let _accounted = handle.usage().map(|usage| {
            self.ctx.stats.register(
                &container_id,
                crate::stats::Running {
                    namespace: ns.clone(),
                    pod: pod_name.clone(),
                    uid: self.pod.uid().unwrap_or_default(),
                    container: self.spec.name.clone(),
                    image: self.spec.image.clone().unwrap_or_default(),
                    started: started_at.0,
                    pod_dir: self.ctx.pod_dir(&self.pod),
                    usage,
                },
            )
        });
        self.ctx.logs.set(
            &ns,
            &pod_name,
            &self.spec.name,
            crate::logs::ContainerLogs {
                dir: dir.clone(),
                restart_count,
                running: true,
            },
        );
        let cid = container_id.clone();
        let at = started_at.clone();
        let (started, ready) = self.unprobed();
        self.shared.update(self.slot, |r| {
            r.probe_started = started;
            r.probe_ready = ready;
            r.enter(State::Running { started_at: at });
            r.restart_count = restart_count;
            r.container_id = Some(cid);
        });
        self.record_pulled().await;
        self.event(
            EventType::Normal,
            "Created",
            format!("Created container: {}", self.spec.name),
        )
        .await;
        self.event(
            EventType::Normal,
            "Started",
            format!("Started container {}", self.spec.name),
        )
        .await;
        // Stopped by deletion, a deadline, node shutdown or (for a sidecar) the end of the
        // app containers: the kubelet's Killing event, then the kill.
        let killer = handle.killer();
        let wait = handle.wait();
        tokio::pin!(wait);
        // Probes run against the pod's address; a pod without one fails them.
        let ip = self.pod_ip();
        // The grace a stopping run gets (a served component's requests in flight).
        let pod_grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        let grace = std::time::Duration::from_secs(
            pod_grace.and_then(|s| u64::try_from(s).ok()).unwrap_or(30),
        );
        let probing = self.probe(ip);
        tokio::pin!(probing);
        let exit = tokio::select! {
            exit = &mut wait => exit,
            kind = &mut probing => {
                self.event(
                    EventType::Normal,
                    "Killing",
                    format!(
                        "Container {} failed {} probe, will be restarted",
                        self.spec.name,
                        kind.lower()
                    ),
                )
                .await;
                killer(crate::pods::probe::kill_grace(kind, &self.spec, pod_grace));
                wait.await
            }
            () = self.kill.cancelled() => {
                self.event(
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {}", self.spec.name),
                )
                .await;
                let cap = self.shared.grace_cap.get().copied().unwrap_or(grace);
                killer(grace.min(cap));
                wait.await
            }
        };
        let message = termination::message(
            &self.spec,
            &term_file,
            &log_path,
            exit.code,
            exit.message.clone(),
        )
        .await;
        let terminated = Terminated {
            exit_code: exit.code,
            reason: Some(exit.reason.clone()),
            message,
            started_at: Some(started_at),
            finished_at: Some(now()),
            container_id: Some(container_id),
        };
        self.ctx.logs.finish(
            &ns,
            &pod_name,
            &self.spec.name,
            crate::logs::ContainerLogs {
                dir,
                restart_count,
                running: false,
            },
        );
        self.shared
            .update(self.slot, |r| r.state = State::Terminated(terminated));
        Run::Exited(exit)
    }
}
