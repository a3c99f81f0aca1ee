//! Images pushed for the tests (wasm workloads, container images, multi-platform
//! indexes) and registries of a test's own.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::root;

/// A registry client for `registry` (plain HTTP: every registry of the tests is local).
fn registry_client(registry: &str) -> oci_client::Client {
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(vec![registry.to_owned()]),
        ..Default::default()
    })
}

/// `target/wasm/<workload>.wasm`.
///
/// # Errors
/// When it is not built.
pub fn workload(name: &str) -> Result<Vec<u8>> {
    let path = root().join("target/wasm").join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("{} (run hack/build-wasm)", path.display()))
}

/// The digest and size of the manifest `reference` points at.
///
/// # Errors
/// When the registry refuses.
pub async fn manifest_digest(
    registry: &str,
    reference: &str,
    auth: &oci::RegistryAuth,
) -> Result<(String, usize)> {
    let parsed: oci_client::Reference = reference.parse()?;
    let (bytes, digest) = registry_client(registry)
        .pull_manifest_raw(
            &parsed,
            auth,
            &[
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
            ],
        )
        .await?;
    Ok((digest, bytes.len()))
}

/// Pushes `workload` to `registry/repo:tag` in `format`; returns the reference.
///
/// # Errors
/// When the workload is not built or the push fails.
pub async fn push_as(
    registry: &str,
    workload_name: &str,
    repo_tag: &str,
    format: &oci::PushFormat,
    auth: &oci::RegistryAuth,
) -> Result<String> {
    let reference = format!("{registry}/{repo_tag}");
    let _one_at_a_time = PUSHES.lock().await;
    oci::push_as(
        workload(workload_name)?,
        &reference,
        auth,
        &[registry.to_owned()],
        format,
    )
    .await?;
    Ok(reference)
}

/// Pushes component `workload` to `registry/repo:tag` as the wasm package tools do (`wkg
/// oci push`, through Bytecode Alliance's `oci-wasm`): an OCI image manifest (its
/// `mediaType` set) whose config, `application/vnd.wasm.config.v0+json`, says
/// `os: wasip2` and lists the component's world imports and exports, and one
/// `application/wasm` layer. Returns the reference.
///
/// # Errors
/// When the workload is not built, is not a component, or the push fails.
pub async fn push_wkg(registry: &str, workload_name: &str, repo_tag: &str) -> Result<String> {
    use sha2::Digest as _;
    let wasm = workload(workload_name)?;
    let (resolve, world) = match wit_component::decode(&wasm)
        .with_context(|| format!("{workload_name}: decoding its WIT"))?
    {
        wit_component::DecodedWasm::Component(resolve, world) => (resolve, world),
        wit_component::DecodedWasm::WitPackage(..) => bail!("{workload_name} is a WIT package"),
    };
    // oci-wasm names an interface by its full id and anything else by its name.
    let name = |key: &wit_parser::WorldKey| match key {
        wit_parser::WorldKey::Interface(id) => resolve.id_of(*id),
        wit_parser::WorldKey::Name(name) => Some(name.clone()),
    };
    let world = &resolve.worlds[world];
    let exports: Vec<String> = world.exports.keys().filter_map(name).collect();
    let imports: Vec<String> = world.imports.keys().filter_map(name).collect();
    let config = serde_json::json!({
        "created": jiff::Timestamp::now().to_string(),
        "author": null,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [format!("sha256:{:x}", sha2::Sha256::digest(&wasm))],
        "component": {
            "exports": exports,
            "imports": imports,
            "target": null,
        },
    });
    let config = oci_client::client::Config::new(
        serde_json::to_vec(&config)?,
        "application/vnd.wasm.config.v0+json".to_owned(),
        None,
    );
    let layers = [oci_client::client::ImageLayer::new(
        wasm,
        "application/wasm".to_owned(),
        None,
    )];
    let mut manifest = oci_client::manifest::OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some("application/vnd.oci.image.manifest.v1+json".to_owned());
    let reference = format!("{registry}/{repo_tag}");
    let _one_at_a_time = PUSHES.lock().await;
    registry_client(registry)
        .push(
            &reference.parse()?,
            &layers,
            config,
            &oci::RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await?;
    Ok(reference)
}

/// Pushes from the tests go one at a time: the registry's filesystem storage loses
/// uploads when several clients push the same blob at once ("blob unknown to registry").
static PUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pushes a container image (a config and one `tar+gzip` layer of `content`) to
/// `registry/repo:tag`; returns the reference.
///
/// # Errors
/// When the push fails.
pub async fn push_container_image(
    registry: &str,
    repo_tag: &str,
    content: &[u8],
) -> Result<String> {
    let reference = format!("{registry}/{repo_tag}");
    let layer = oci_client::client::ImageLayer::new(
        content.to_vec(),
        "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        None,
    );
    let config = oci_client::client::Config::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
        "application/vnd.oci.image.config.v1+json".to_owned(),
        None,
    );
    let _one_at_a_time = PUSHES.lock().await;
    registry_client(registry)
        .push(
            &reference.parse()?,
            &[layer],
            config,
            &oci::RegistryAuth::Anonymous,
            None,
        )
        .await?;
    Ok(reference)
}

/// Pushes a multi-platform image index to `registry/repo:tag` whose entries are a
/// linux/amd64 container image and `workload` as wasip1/wasm; returns the reference and
/// the index digest.
///
/// # Errors
/// When a push fails.
pub async fn push_index(
    registry: &str,
    workload_name: &str,
    repo_tag: &str,
) -> Result<(String, String)> {
    let anonymous = oci::RegistryAuth::Anonymous;
    let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
    let wasm = push_as(
        registry,
        workload_name,
        &format!("{repo}:part-wasm"),
        &oci::PushFormat::cncf(),
        &anonymous,
    )
    .await?;
    let linux = push_container_image(registry, &format!("{repo}:part-linux"), b"not wasm").await?;
    let (wasm_digest, wasm_size) = manifest_digest(registry, &wasm, &anonymous).await?;
    let (linux_digest, linux_size) = manifest_digest(registry, &linux, &anonymous).await?;
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": linux_digest,
              "size": linux_size, "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": wasm_digest,
              "size": wasm_size, "platform": { "os": "wasip1", "architecture": "wasm" } }
        ]
    }))?;
    let reference = format!("{registry}/{repo_tag}");
    let one_at_a_time = PUSHES.lock().await;
    registry_client(registry)
        .push_manifest_list(&reference.parse()?, &anonymous, index)
        .await?;
    drop(one_at_a_time);
    let (digest, _) = manifest_digest(registry, &reference, &anonymous).await?;
    Ok((reference, digest))
}

/// A registry of a test's own: Debian's `docker-registry` as a child process on
/// `127.0.0.1:<port>`, optionally requiring a user and password (htpasswd, bcrypt);
/// stopped when dropped.
pub struct OwnRegistry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
    auth: Option<(String, String)>,
}

impl OwnRegistry {
    /// Prepares registry `name` (state under `target/e2e/registry-<name>`, emptied) on
    /// `port`; it is not started yet.
    ///
    /// # Errors
    /// When the state directory or the password file cannot be written.
    pub fn new(name: &str, port: u16, auth: Option<(&str, &str)>) -> Result<Self> {
        let dir = root().join("target/e2e").join(format!("registry-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: e2e-{name}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 5)?;
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: e2e-{name}\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config)?;
        Ok(Self {
            addr,
            dir,
            child: None,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        })
    }

    /// Starts it and waits until it answers.
    ///
    /// # Errors
    /// When it does not start within 30 s.
    pub async fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (hack/build-tools installs it)")?;
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("registry on {} did not start", self.addr)
    }

    /// Stops it (its content stays on disk for the next [`OwnRegistry::start`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The credentials it requires, for pushing.
    #[must_use]
    pub fn auth(&self) -> oci::RegistryAuth {
        match &self.auth {
            Some((u, p)) => oci::RegistryAuth::Basic(u.clone(), p.clone()),
            None => oci::RegistryAuth::Anonymous,
        }
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
