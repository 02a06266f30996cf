//! Models the hub's configuration names ([`edge_config::fleet::models`]): fetched from the hub
//! by their SHA-256, checked, kept beside the store, and run on their fixture rows before they
//! replace the model running.
//!
//! A model is taken only when everything holds: the configuration names where to fetch it
//! ([`firmware::proto::ModelRef`]); its signature is the hub's (when the edge has the hub's
//! public key, `sync.config_public_key`); the file and its fixture have the SHA-256 the
//! configuration names; the file is a model for its slot ([`Model::from_bytes`]); and it gives
//! the fixture's outputs for the fixture's rows ([`Model::check_fixture`]). Anything else
//! refuses the configuration, with the reason, and the model running keeps running. A fetch
//! that fails (the hub cannot be reached) fails it instead: it is tried again later. A model
//! kept by an earlier fetch is not fetched again.

use crate::config::Config;
use crate::model::{sha256_hex, Fixture, Model, ModelKind};
use edge_config::fleet;
use firmware::proto::{ApplyResult, ModelRef};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest model file fetched, bytes (the shipped ones are 20 KB).
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

/// The largest fixture fetched, bytes (the shipped ones are 150 KB).
pub const MAX_FIXTURE_BYTES: u64 = 64 << 20;

/// How long one fetch may take, whole.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Models kept that no configuration in force names, at most (for a quick rollback); the
/// oldest go first.
const KEEP_UNUSED: usize = 6;

/// A model fetched and checked, not yet running.
#[derive(Debug)]
pub struct Staged {
    /// Where it is kept (the path `detect.models` names once the configuration is applied).
    pub path: PathBuf,
    pub model: Model,
}

/// Why a model was not taken: `Refused` (the model or its message is bad) or `Failed` (it could
/// not be fetched or kept: tried again).
pub type Refusal = (ApplyResult, String);

fn kind_of(slot: &str) -> ModelKind {
    if slot == "autoencoder" {
        ModelKind::Autoencoder
    } else {
        ModelKind::Classifier
    }
}

/// Bring in every model `doc` names that is not running in `running`: from what is kept, or
/// from the hub. `ca_file` (PEM) is trusted for an `https` hub; empty: the usual web roots.
pub fn stage(
    running: &Config,
    doc: &serde_json::Value,
    refs: &[ModelRef],
    ca_file: &Path,
) -> Result<Vec<Staged>, Refusal> {
    let refuse = |why: String| (ApplyResult::Refused, why);
    let mut staged = Vec::new();
    for (slot, sha) in fleet::models(doc) {
        if sha.is_empty() {
            continue;
        }
        let path = fleet::model_file(running, &sha);
        let in_force = match slot {
            "autoencoder" => &running.detect.models.autoencoder,
            _ => &running.detect.models.classifier,
        };
        if Path::new(in_force) == path {
            continue;
        }
        let Some(r) = refs.iter().find(|r| r.kind == slot && r.sha256 == sha) else {
            return Err(refuse(format!(
                "models.{slot}: it names model {sha} but not where to fetch it"
            )));
        };
        let key = &running.sync.config_public_key;
        if !key.is_empty() {
            fleet::verify_model(key, slot, &r.sha256, &r.fixture_sha256, &r.signature)
                .map_err(|why| refuse(format!("models.{slot} ({}): {why}", short(&sha))))?;
        }
        let fixture_path = path.with_file_name(format!("{sha}.fixture.json"));
        let bytes = bring(&path, &r.url, &sha, MAX_MODEL_BYTES, ca_file)
            .map_err(|(result, why)| (result, format!("models.{slot}: {why}")))?;
        let fixture =
            bring(&fixture_path, &r.fixture_url, &r.fixture_sha256, MAX_FIXTURE_BYTES, ca_file)
                .map_err(|(result, why)| (result, format!("models.{slot}: its fixture: {why}")))?;
        let model = Model::from_bytes(&bytes, &path, kind_of(slot))
            .map_err(|e| refuse(format!("models.{slot}: {e}")))?;
        let fixture: Fixture = serde_json::from_slice(&fixture)
            .map_err(|e| refuse(format!("models.{slot}: its fixture is not one: {e}")))?;
        model.check_fixture(&fixture).map_err(|why| {
            refuse(format!("models.{slot} ({} {}): {why}", model.name, model.version))
        })?;
        keep(&path, &bytes)
            .and_then(|()| keep(&fixture_path, &serde_json::to_vec(&fixture).unwrap_or_default()))
            .map_err(|e| (ApplyResult::Failed, format!("models.{slot}: cannot keep it: {e}")))?;
        staged.push(Staged { path, model });
    }
    Ok(staged)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The bytes of a file with this SHA-256: the copy kept at `path` if it is whole, else fetched
/// from `url`.
fn bring(
    path: &Path,
    url: &str,
    sha: &str,
    limit: u64,
    ca_file: &Path,
) -> Result<Vec<u8>, Refusal> {
    if let Ok(bytes) = std::fs::read(path) {
        if sha256_hex(&bytes) == sha {
            return Ok(bytes);
        }
        tracing::warn!(path = %path.display(), "a model kept here does not match its hash; fetched again");
    }
    let bytes = fetch(url, limit, ca_file).map_err(|e| (ApplyResult::Failed, e))?;
    let got = sha256_hex(&bytes);
    if got != sha {
        return Err((
            ApplyResult::Refused,
            format!("{url} gave a file whose SHA-256 is {got}, not {sha}"),
        ));
    }
    Ok(bytes)
}

/// GET `url`, at most `limit` bytes.
pub fn fetch(url: &str, limit: u64, ca_file: &Path) -> Result<Vec<u8>, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?}: not an http or https address"));
    }
    let mut tls = ureq::tls::TlsConfig::builder();
    if !ca_file.as_os_str().is_empty() {
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("sync.ca_file {}: {e}", ca_file.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .tls_config(tls.build())
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| format!("fetching {url}: {e}"))?;
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| format!("reading {url} (at most {limit} bytes): {e}"))
}

/// Write `bytes` to `path` whole or not at all.
fn keep(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(at)?;
    }
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(at)
}

/// Remove kept models (and their fixtures) that `running` does not use, but the newest
/// [`KEEP_UNUSED`].
pub fn prune(running: &Config) {
    let dir = fleet::model_dir(running);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let used = [&running.detect.models.autoencoder, &running.detect.models.classifier];
    let mut unused: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .filter(|p| !used.iter().any(|u| Path::new(u.as_str()) == p))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    unused.sort();
    let excess = unused.len().saturating_sub(KEEP_UNUSED);
    for (_, p) in unused.into_iter().take(excess) {
        let fixture = p.with_extension("fixture.json");
        for f in [p, fixture] {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(path = %f.display(), "cannot remove a model no longer used: {e}");
            }
        }
    }
}
