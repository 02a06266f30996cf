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
            fleet::verify_model(key, r)
                .map_err(|why| refuse(format!("models.{slot} ({}): {why}", short(&sha))))?;
        }
        let fixture_path = path.with_file_name(format!("{sha}.fixture.json"));
        let bytes = bring(&path, &r.url, &sha, MAX_MODEL_BYTES, ca_file)
            .map_err(|(result, why)| (result, format!("models.{slot}: {why}")))?;
        let fixture_bytes =
            bring(&fixture_path, &r.fixture_url, &r.fixture_sha256, MAX_FIXTURE_BYTES, ca_file)
                .map_err(|(result, why)| (result, format!("models.{slot}: its fixture: {why}")))?;
        let kind = ModelKind::parse(slot).unwrap_or(ModelKind::Classifier); // a slot of MODEL_SLOTS
        let model = Model::from_bytes(&bytes, &path, kind)
            .map_err(|e| refuse(format!("models.{slot}: {e}")))?;
        let fixture: Fixture = serde_json::from_slice(&fixture_bytes)
            .map_err(|e| refuse(format!("models.{slot}: its fixture is not one: {e}")))?;
        model.check_fixture(&fixture).map_err(|why| {
            refuse(format!("models.{slot} ({} {}): {why}", model.name, model.version))
        })?;
        keep(&path, &bytes)
            .and_then(|()| keep(&fixture_path, &fixture_bytes))
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
    crate::write_whole(path, bytes)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    fn shipped(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shipped");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// An HTTP server on 127.0.0.1 answering each path with its bytes (404 otherwise); its
    /// address and how many requests it served.
    fn serve(
        files: Vec<(String, Vec<u8>)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(body));
                    }
                    None => {
                        let _ = s.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            }
        });
        (addr, served)
    }

    fn edge(dir: &Path, key: &str) -> Config {
        let mut c = Config::offline(None);
        c.store.path = dir.join("edge.db");
        c.sync.config_public_key = key.into();
        c
    }

    /// A model as the hub names it, fetched from `base`, signed with `key`.
    fn model_ref(
        base: &str,
        sha: &str,
        fixture_sha: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> ModelRef {
        let mut r = ModelRef {
            kind: "classifier".into(),
            sha256: sha.into(),
            fixture_sha256: fixture_sha.into(),
            size: 0,
            name: "classifier".into(),
            version: "t".into(),
            url: format!("{base}/m"),
            fixture_url: format!("{base}/f"),
            signature: String::new(),
        };
        r.signature = fleet::sign_model(key, &r);
        r
    }

    #[test]
    fn test_a_model_is_taken_only_signed_whole_and_giving_its_fixtures_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let key = fleet::signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let other = fleet::signing_key("HwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let running = edge(dir.path(), &fleet::public_key_text(&key));
        let (onnx, fixture) = (shipped("classifier.onnx"), shipped("fixtures/classifier.json"));
        let (sha, fsha) = (sha256_hex(&onnx), sha256_hex(&fixture));
        let doc = serde_json::json!({"models": {"classifier": sha}});
        let (base, served) =
            serve(vec![("/m".into(), onnx.clone()), ("/f".into(), fixture.clone())]);
        let ca = Path::new("");
        let refused = |r: Result<Vec<Staged>, Refusal>| match r {
            Err((ApplyResult::Refused, why)) => why,
            other => panic!("{other:?}"),
        };

        // Named without where to fetch it; signed by another key: refused, nothing fetched.
        assert!(refused(stage(&running, &doc, &[], ca)).contains("not where to fetch"));
        let forged = model_ref(&base, &sha, &fsha, &other);
        assert!(refused(stage(&running, &doc, &[forged], ca)).contains("not the hub's"));
        // The hub's, sent elsewhere on the way (an address inside the tap's network).
        let mut moved = model_ref(&base, &sha, &fsha, &key);
        moved.url = "http://169.254.169.254/latest/meta-data".into();
        assert!(refused(stage(&running, &doc, &[moved], ca)).contains("not the hub's"));
        assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 0);

        // A file that is not what its hash says (the fixture's bytes where the model is).
        let (wrong, _) =
            serve(vec![("/m".into(), fixture.clone()), ("/f".into(), fixture.clone())]);
        let r = model_ref(&wrong, &sha, &fsha, &key);
        assert!(refused(stage(&running, &doc, &[r], ca)).contains("SHA-256"));
        // A fixture whose outputs the model does not give (signed: the hub checked it, yet the
        // edge runs it again).
        let mut f: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
        f["outputs"][0][0] = serde_json::json!(f["outputs"][0][0].as_f64().unwrap() + 0.5);
        let bad_fixture = serde_json::to_vec(&f).unwrap();
        let bad_sha = sha256_hex(&bad_fixture);
        let (odd, _) = serve(vec![("/m".into(), onnx.clone()), ("/f".into(), bad_fixture)]);
        let r = model_ref(&odd, &sha, &bad_sha, &key);
        assert!(refused(stage(&running, &doc, &[r], ca)).contains("fixture row 0"));
        assert!(!fleet::model_file(&running, &sha).exists(), "nothing kept of a refused model");

        // The hub's: fetched, checked, kept; the next time the kept copy is used.
        let good = model_ref(&base, &sha, &fsha, &key);
        let staged = stage(&running, &doc, std::slice::from_ref(&good), ca).unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].path, fleet::model_file(&running, &sha));
        assert_eq!(std::fs::read(&staged[0].path).unwrap(), onnx);
        let before = served.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(before, 2);
        let gone = model_ref("http://127.0.0.1:1", &sha, &fsha, &key);
        assert_eq!(stage(&running, &doc, std::slice::from_ref(&gone), ca).unwrap().len(), 1);
        assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), before);
        // A kept copy that changed on disk is fetched again; the hub out of reach: failed (tried
        // again later), not refused.
        std::fs::write(fleet::model_file(&running, &sha), b"changed").unwrap();
        match stage(&running, &doc, &[gone], ca) {
            Err((ApplyResult::Failed, why)) => assert!(why.contains("fetching"), "{why}"),
            other => panic!("{other:?}"),
        }
        // In force already: nothing to do.
        let (in_force, _) = fleet::apply(&running, &doc).unwrap();
        assert!(stage(&in_force, &doc, &[], ca).unwrap().is_empty());
    }

    #[test]
    fn test_a_fetch_is_http_and_bounded() {
        for url in ["file:///etc/passwd", "ftp://hub/m", "/api/v1/models/x/file"] {
            assert!(fetch(url, 10, Path::new("")).unwrap_err().contains("not an http"), "{url}");
        }
        let (base, _) = serve(vec![("/big".into(), vec![7u8; 4096])]);
        assert_eq!(fetch(&format!("{base}/big"), 4096, Path::new("")).unwrap().len(), 4096);
        let e = fetch(&format!("{base}/big"), 1000, Path::new("")).unwrap_err();
        assert!(e.contains("at most 1000 bytes"), "{e}");
        assert!(fetch(&format!("{base}/none"), 1000, Path::new("")).unwrap_err().contains("404"));
    }

    #[test]
    fn test_models_no_longer_used_are_pruned_but_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = edge(dir.path(), "");
        let models = fleet::model_dir(&running);
        std::fs::create_dir_all(&models).unwrap();
        for i in 0..10u8 {
            let sha = format!("{i:02x}").repeat(32);
            std::fs::write(models.join(format!("{sha}.onnx")), [i]).unwrap();
            std::fs::write(models.join(format!("{sha}.fixture.json")), [i]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        // The oldest is in use.
        running.detect.models.classifier =
            models.join(format!("{}.onnx", "00".repeat(32))).display().to_string();
        prune(&running);
        let mut left: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy()[..2].to_string())
            .collect();
        left.sort();
        left.dedup();
        assert_eq!(left, ["00", "04", "05", "06", "07", "08", "09"]);
        assert_eq!(std::fs::read_dir(&models).unwrap().count(), 14);
    }
}
