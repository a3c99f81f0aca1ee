//! The node's credentials for the API server: TLS bootstrap (`--bootstrap-kubeconfig`)
//! and the client whose certificate rotates (`--rotate-certificates`), see
//! `kubelet::certificates`.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::NodeArgs;

/// The renewal of the client certificate: it ends in an error (after cancelling the
/// node's `shutdown`) when the certificate expired and could not be renewed.
pub(crate) type Rotation = tokio::task::JoinHandle<kubelet::certificates::Result<()>>;

/// The node's API client: after TLS bootstrap when --bootstrap-kubeconfig is given; over
/// a rotating client certificate (renewed until `shutdown`) with --rotate-certificates.
pub(crate) async fn node_client(
    args: &NodeArgs,
    cert_dir: &std::path::Path,
    node_name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(kube::Client, Option<Rotation>)> {
    use kubelet::certificates::{CSR_WAIT, bootstrap};
    if let Some(bootstrap_kubeconfig) = &args.bootstrap_kubeconfig {
        let kubeconfig = args
            .kubeconfig
            .clone()
            .context("--bootstrap-kubeconfig needs --kubeconfig, where the node's is written")?;
        bootstrap::Bootstrap {
            kubeconfig,
            bootstrap_kubeconfig: bootstrap_kubeconfig.clone(),
            cert_dir: cert_dir.to_owned(),
            node_name: node_name.to_owned(),
            wait: CSR_WAIT,
        }
        .run()
        .await
        .context("TLS bootstrap")?;
    }
    if !args.rotate_certificates {
        return Ok((crate::client(args.kubeconfig.as_ref()).await?, None));
    }
    let kubeconfig = args
        .kubeconfig
        .as_ref()
        .context("--rotate-certificates needs --kubeconfig")?;
    let (client, rotator) = bootstrap::rotating_client(kubeconfig, cert_dir, node_name)
        .await
        .context("the rotating client certificate")?;
    let shutdown = shutdown.clone();
    let rotation = tokio::spawn(async move {
        let ended = rotator.run(shutdown.clone()).await;
        if let Err(e) = &ended {
            tracing::error!(error = %e, "stopping the node agent");
            shutdown.cancel();
        }
        ended
    });
    Ok((client, Some(rotation)))
}
