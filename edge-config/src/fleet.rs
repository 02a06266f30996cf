//! The fleet configuration: the part of an edge's configuration the hub sets at run time.
//!
//! A fleet document is a JSON object of the edge's own sections, holding only what the hub may
//! set ([`ALLOWED`]); the device's `edge.toml` keeps the rest (its id, the broker and its
//! credentials, paths, listen addresses, flow-table size):
//!
//! ```json
//! {"capture": {"*": {"rules": [{"name": "no-ssh", "action": "exclude", "port": 22}]},
//!              "eth1": {"sample": 4}},
//!  "detect": {"quiet_s": 60, "thresholds": {"port_scan_ports": 80}, "suppress": []},
//!  "store": {"max_age_hours": 72},
//!  "sync": {"metrics_interval_s": 30},
//!  "models": {"classifier": "9f2c...64 hex digits"}}
//! ```
//!
//! `capture` is by interface name; `*` is for each interface with no entry of its own. The hub
//! keeps a global document, one per device group and one per device, and merges them in that
//! order with JSON Merge Patch (RFC 7396: an object merges key by key, anything else replaces,
//! `null` removes), [`merge`]. The edge lays the merged document over its `edge.toml` the same
//! way ([`apply`]) and checks the result as it checks a file at start-up, so the hub, which
//! checks a document with [`check`] before it accepts it, and the edge agree on what is valid.
//!
//! `models` names a model for each slot by the SHA-256 of its ONNX file (`""`: no model in that
//! slot): one uploaded to the hub, which checked and signed it ([`sign_model`]). The edge fetches
//! it and its fixture by those hashes, checks both and the signature ([`verify_model`]), keeps
//! them in [`model_dir`] and runs the fixture before it swaps the model in; [`apply`] puts the
//! kept file's path in `detect.models`.
//!
//! `update` names an update bundle of the edge program by its SHA-256 (`""`: none), one
//! uploaded to the hub ([`update`], [`sign_update`]); the edge fetches it, checks the release
//! key's signature and installs it on trial (`tapwatch-edge`'s `update` module).

use crate::{Config, DeviceConfig, InterfaceConfig};
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::Digest as _;

/// What the hub may set, by section: the keys allowed in each (`capture`'s entries are per
/// interface, each allowing [`CAPTURE_KEYS`]). Everything here is applied without a restart.
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("detect", &["quiet_s", "update_s", "thresholds", "suppress"]),
    ("store", &["max_size_mb", "max_age_hours", "evidence_max_packets"]),
    ("sync", &["metrics_interval_s"]),
];

/// The model slots `models` may name (`detect.models`' files).
pub const MODEL_SLOTS: &[&str] = &["autoencoder", "classifier"];

/// What the hub may set of an interface's capture.
pub const CAPTURE_KEYS: &[&str] = &["rules", "sample"];

/// The entry of `capture` for each interface without one of its own.
pub const EVERY_INTERFACE: &str = "*";

/// The largest fleet document, bytes of JSON (a thousand capture rules fit easily).
pub const MAX_BYTES: usize = 256 * 1024;

/// Merge layers in order, each over the ones before (RFC 7396).
pub fn merge<'a>(layers: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut doc = Value::Object(Map::new());
    for layer in layers {
        json_patch::merge(&mut doc, layer);
    }
    prune(&mut doc);
    doc
}

/// Objects left empty by a merge go (an emptied section says nothing).
fn prune(v: &mut Value) {
    if let Value::Object(m) = v {
        for child in m.values_mut() {
            prune(child);
        }
        m.retain(|_, c| !matches!(c, Value::Object(o) if o.is_empty()) && !c.is_null());
    }
}

/// SHA-256 of a document in canonical JSON (keys sorted, no white space), as hex.
pub fn hash(doc: &Value) -> String {
    // serde_json's maps are sorted (no `preserve_order`), so its compact text is canonical.
    let text = serde_json::to_string(doc).unwrap_or_default();
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the hub signs of a configuration message: its device, revision and hash (the hash
/// covers the document).
fn signed_bytes(device: &str, revision: u64, hash: &str) -> Vec<u8> {
    format!("tapwatch-config-v1\0{device}\0{revision}\0{hash}").into_bytes()
}

/// What the hub signs of a model: its slot, the SHA-256 of its file and of its fixture, and
/// where to fetch each (so that an edge fetches from nowhere else: a message altered on the
/// broker cannot send it to another address).
fn model_signed_bytes(r: &firmware::proto::ModelRef) -> Vec<u8> {
    format!(
        "tapwatch-model-v1\0{}\0{}\0{}\0{}\0{}",
        r.kind, r.sha256, r.fixture_sha256, r.url, r.fixture_url
    )
    .into_bytes()
}

/// What the hub signs of an update it names: the bundle's hash, its version and where to fetch
/// it (the bundle itself is signed by the release key).
fn update_signed_bytes(r: &firmware::proto::UpdateRef) -> Vec<u8> {
    format!("tapwatch-update-ref-v1\0{}\0{}\0{}", r.sha256, r.version, r.url).into_bytes()
}

/// The hub's signature of an update it names, base64.
pub fn sign_update(key: &ed25519_dalek::SigningKey, r: &firmware::proto::UpdateRef) -> String {
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&update_signed_bytes(r));
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

/// Check the hub's signature of an update it names.
pub fn verify_update(public_key: &str, r: &firmware::proto::UpdateRef) -> Result<(), String> {
    verify_bytes(public_key, &update_signed_bytes(r), &r.signature, "updates")
}

/// The update a document names: the SHA-256 of a bundle kept at the hub; `None` when it names
/// none (or `""`).
pub fn update(doc: &Value) -> Option<String> {
    doc.get("update").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// What the hub signs of a command: its device, id, command (as the contract names it) and time.
fn command_signed_bytes(device: &str, id: u64, command: &str, ts: i64) -> Vec<u8> {
    format!("tapwatch-command-v1\0{device}\0{id}\0{command}\0{ts}").into_bytes()
}

/// The signature of a command, base64.
pub fn sign_command(
    key: &ed25519_dalek::SigningKey,
    device: &str,
    id: u64,
    command: &str,
    ts: i64,
) -> String {
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&command_signed_bytes(device, id, command, ts));
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

/// Check a command's signature against the hub's public key (base64).
pub fn verify_command(
    public_key: &str,
    device: &str,
    id: u64,
    command: &str,
    ts: i64,
    signature: &str,
) -> Result<(), String> {
    verify_bytes(public_key, &command_signed_bytes(device, id, command, ts), signature, "commands")
}

/// Where an edge keeps the models the hub sent: beside its store.
pub fn model_dir(config: &Config) -> std::path::PathBuf {
    config.store.path.with_file_name("models")
}

/// The file an edge keeps a model in, by its SHA-256 (its fixture: `<sha256>.fixture.json`).
pub fn model_file(config: &Config, sha256: &str) -> std::path::PathBuf {
    model_dir(config).join(format!("{sha256}.onnx"))
}

/// The models a document names: (slot, SHA-256, `""` for none).
pub fn models(doc: &Value) -> Vec<(&'static str, String)> {
    MODEL_SLOTS
        .iter()
        .filter_map(|slot| {
            let v = doc.get("models")?.get(*slot)?.as_str()?;
            Some((*slot, v.to_string()))
        })
        .collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A signing key from its file's text: the 32-byte seed in base64, on the first line.
pub fn signing_key(text: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.lines().next().unwrap_or_default().trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let seed: [u8; 32] =
        bytes.try_into().map_err(|_| "a signing key is 32 bytes (44 characters of base64)")?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A verifying key as edges are given it: base64 of its 32 bytes.
pub fn public_key_text(key: &ed25519_dalek::SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
}

/// The signature of a configuration message, base64.
pub fn sign(key: &ed25519_dalek::SigningKey, device: &str, revision: u64, hash: &str) -> String {
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&signed_bytes(device, revision, hash));
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

/// Check a configuration message's signature against the hub's public key (base64).
pub fn verify(
    public_key: &str,
    device: &str,
    revision: u64,
    hash: &str,
    signature: &str,
) -> Result<(), String> {
    verify_bytes(public_key, &signed_bytes(device, revision, hash), signature, "configurations")
}

/// The signature of a model as an edge is told of it, base64 (its `signature` is not signed).
pub fn sign_model(key: &ed25519_dalek::SigningKey, r: &firmware::proto::ModelRef) -> String {
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&model_signed_bytes(r));
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

/// Check a model's signature against the hub's public key (base64).
pub fn verify_model(public_key: &str, r: &firmware::proto::ModelRef) -> Result<(), String> {
    verify_bytes(public_key, &model_signed_bytes(r), &r.signature, "models")
}

fn verify_bytes(public_key: &str, bytes: &[u8], signature: &str, what: &str) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: [u8; 32] = b64
        .decode(public_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("the hub's public key is not 32 bytes of base64")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|e| format!("the hub's public key: {e}"))?;
    if signature.is_empty() {
        return Err(format!("it is not signed, and this edge takes only {what} the hub signed"));
    }
    let sig: [u8; 64] = b64
        .decode(signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("its signature is not 64 bytes of base64")?;
    key.verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| "its signature is not the hub's".to_string())
}

/// Problems with a document's shape: a key the hub may not set, or not an object where one is
/// needed. Each names its field.
pub fn shape(doc: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(top) = doc.as_object() else {
        return vec!["the configuration must be a JSON object of sections".into()];
    };
    if serde_json::to_string(doc).map_or(0, |t| t.len()) > MAX_BYTES {
        p.push(format!("the configuration is over {MAX_BYTES} bytes"));
    }
    for (section, v) in top {
        if section == "capture" {
            let Some(ifaces) = v.as_object() else {
                p.push("capture: must be an object of interfaces (\"*\" for every one)".into());
                continue;
            };
            for (name, entry) in ifaces {
                if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
                    p.push(format!("capture.{name:?}: not an interface name"));
                }
                match entry.as_object() {
                    Some(e) => {
                        for k in e.keys().filter(|k| !CAPTURE_KEYS.contains(&k.as_str())) {
                            p.push(format!(
                                "capture.{name}.{k}: the hub may set only {} of a capture",
                                CAPTURE_KEYS.join(", ")
                            ));
                        }
                    }
                    None if entry.is_null() => {}
                    None => p.push(format!("capture.{name}: must be an object")),
                }
            }
            continue;
        }
        if section == "update" {
            if !(v.is_null() || v.as_str().is_some_and(|s| s.is_empty() || is_sha256(s))) {
                p.push(
                    "update: the SHA-256 of an update bundle uploaded to the hub (64 hex digits, \
                     lower case), or \"\" for none"
                        .into(),
                );
            }
            continue;
        }
        if section == "models" {
            let Some(slots) = v.as_object() else {
                if !v.is_null() {
                    p.push("models: must be an object of slots (autoencoder, classifier)".into());
                }
                continue;
            };
            for (slot, sha) in slots {
                if !MODEL_SLOTS.contains(&slot.as_str()) {
                    p.push(format!("models.{slot}: the slots are {}", MODEL_SLOTS.join(", ")));
                } else if !(sha.is_null()
                    || sha.as_str().is_some_and(|s| s.is_empty() || is_sha256(s)))
                {
                    p.push(format!(
                        "models.{slot}: the SHA-256 of a model uploaded to the hub (64 hex \
                         digits, lower case), or \"\" for none"
                    ));
                }
            }
            continue;
        }
        let Some((_, keys)) = ALLOWED.iter().find(|(s, _)| s == section) else {
            p.push(format!(
                "{section}: not a section the hub sets (it sets capture, models, update, {}); the rest is the \
                 edge's own edge.toml",
                ALLOWED.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        match v.as_object() {
            Some(o) => {
                for k in o.keys().filter(|k| !keys.contains(&k.as_str())) {
                    p.push(format!(
                        "{section}.{k}: the hub may set only {} of {section}; the rest is the \
                         edge's own edge.toml",
                        keys.join(", ")
                    ));
                }
            }
            None if v.is_null() => {}
            None => p.push(format!("{section}: must be an object")),
        }
    }
    p
}

/// Lay a document over a configuration; the result is checked as a file is at start-up. An
/// interface named in `capture` that this configuration does not have is a note, not an
/// error (a group's document names the interfaces of all its devices).
pub fn apply(base: &Config, doc: &Value) -> Result<(Config, Vec<String>), Vec<String>> {
    let problems = shape(doc);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut notes = Vec::new();
    let mut v = serde_json::to_value(base).map_err(|e| vec![format!("internal: {e}")])?;
    let empty = Map::new();
    let top = doc.as_object().unwrap_or(&empty);
    for (section, patch) in top {
        if section == "capture" || section == "models" || section == "update" {
            continue;
        }
        json_patch::merge(&mut v[section.as_str()], patch);
    }
    for (slot, sha) in models(doc) {
        let path = if sha.is_empty() {
            String::new()
        } else {
            model_file(base, &sha).to_string_lossy().into_owned()
        };
        v["detect"]["models"][slot] = Value::String(path);
    }
    if let Some(capture) = top.get("capture").and_then(Value::as_object) {
        for name in capture.keys().filter(|n| *n != EVERY_INTERFACE) {
            if !base.interfaces.iter().any(|i| &i.name == name) {
                notes.push(format!("capture.{name}: this edge has no such interface"));
            }
        }
        if let Some(ifaces) = v.get_mut("interface").and_then(Value::as_array_mut) {
            for iface in ifaces {
                let name = iface["name"].as_str().unwrap_or_default().to_string();
                let patch = capture.get(&name).or_else(|| capture.get(EVERY_INTERFACE));
                if let Some(patch) = patch {
                    // `rules` in JSON, `[[interface.rule]]` in the file.
                    let mut patch = patch.clone();
                    if let Some(rules) = patch.as_object_mut().and_then(|p| p.remove("rules")) {
                        patch["rule"] = rules;
                    }
                    json_patch::merge(iface, &patch);
                }
            }
        }
    }
    let config: Config = serde_path_to_error::deserialize(v).map_err(|e| {
        let mut path = e.path().to_string();
        for (i, iface) in base.interfaces.iter().enumerate() {
            path = path.replace(&format!("interface[{i}]"), &format!("capture.{}", iface.name));
        }
        vec![format!("{}: {}", path.replace(".rule[", ".rules["), e.inner())]
    })?;
    let problems = config.check();
    if problems.is_empty() {
        Ok((config, notes))
    } else {
        Err(problems)
    }
}

/// Check a document at the hub, as an edge would: laid over the defaults, with an interface
/// for each one `capture` names.
pub fn check(doc: &Value) -> Vec<String> {
    let mut base = Config::offline(None);
    base.device = DeviceConfig { id: "fleet-check".into() };
    if let Some(capture) = doc.get("capture").and_then(Value::as_object) {
        for name in capture.keys() {
            base.interfaces.push(InterfaceConfig {
                name: name.clone(),
                snaplen: crate::default_snaplen(),
                buffer_mb: crate::default_buffer_mb(),
                promiscuous: true,
                immediate: false,
                queue_packets: crate::default_queue_packets(),
                sample: 1,
                rules: Vec::new(),
            });
        }
    }
    match apply(&base, doc) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edge() -> Config {
        Config::parse(
            "[device]\nid = \"tap-1\"\n[[interface]]\nname = \"eth1\"\n\
             [[interface.rule]]\nname = \"local\"\naction = \"exclude\"\nport = 22\n\
             [[interface]]\nname = \"eth2\"\n",
            "edge.toml",
        )
        .unwrap()
    }

    #[test]
    fn test_only_the_hubs_signature_on_this_message_verifies() {
        let key = signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let public = public_key_text(&key);
        let h = "ab".repeat(32);
        let sig = sign(&key, "tap-1", 7, &h);
        assert_eq!(verify(&public, "tap-1", 7, &h, &sig), Ok(()));
        // Another device, revision or hash (the document), or another key: refused.
        for (d, r, hash) in
            [("tap-2", 7, h.clone()), ("tap-1", 8, h.clone()), ("tap-1", 7, "cd".repeat(32))]
        {
            assert!(verify(&public, d, r, &hash, &sig).is_err(), "{d} {r}");
        }
        let other = signing_key("HwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert!(verify(&public_key_text(&other), "tap-1", 7, &h, &sig).is_err());
        assert!(verify(&public, "tap-1", 7, &h, "").unwrap_err().contains("not signed"));
        assert!(verify(&public, "tap-1", 7, &h, "bm90IGEgc2lnbmF0dXJl").is_err());
        assert!(verify("short", "tap-1", 7, &h, &sig).unwrap_err().contains("public key"));
        assert!(signing_key("c2hvcnQ=").is_err());
    }

    #[test]
    fn test_models_are_named_by_hash_and_kept_beside_the_store() {
        let sha = "0123456789abcdef".repeat(4);
        let doc = json!({"models": {"classifier": sha, "autoencoder": ""}});
        assert!(check(&doc).is_empty(), "{:?}", check(&doc));
        let (c, _) = apply(&edge(), &doc).unwrap();
        let want = edge().store.path.with_file_name("models").join(format!("{sha}.onnx"));
        assert_eq!(c.detect.models.classifier, want.to_string_lossy());
        assert_eq!(c.detect.models.autoencoder, "");
        assert_eq!(models(&doc), [("autoencoder", String::new()), ("classifier", sha.clone())]);
        for (doc, field) in [
            (json!({"models": {"classifier": "../../etc/passwd"}}), "models.classifier"),
            (json!({"models": {"classifier": sha.to_uppercase()}}), "models.classifier"),
            (json!({"models": {"classifier": 7}}), "models.classifier"),
            (json!({"models": {"detector": sha}}), "models.detector"),
            (json!({"models": [sha]}), "models:"),
            (json!({"update": "../x"}), "update:"),
            (json!({"update": 7}), "update:"),
        ] {
            let p = check(&doc);
            assert!(p.iter().any(|p| p.contains(field)), "{doc}: {p:?}");
        }
        // An update is named by hash; it changes nothing of edge.toml.
        let doc = json!({"update": sha});
        assert!(check(&doc).is_empty(), "{:?}", check(&doc));
        assert_eq!(apply(&edge(), &doc).unwrap().0, edge());
        assert_eq!(update(&doc), Some(sha.clone()));
        assert_eq!(update(&json!({"update": ""})), None);
        // A model's signature covers its slot, both hashes and both addresses.
        let key = signing_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let public = public_key_text(&key);
        let fx = "ff".repeat(32);
        let mut r = firmware::proto::ModelRef {
            kind: "classifier".into(),
            sha256: sha.clone(),
            fixture_sha256: fx.clone(),
            size: 1,
            name: "c".into(),
            version: "1".into(),
            url: "http://hub/m".into(),
            fixture_url: "http://hub/f".into(),
            signature: String::new(),
        };
        assert!(verify_model(&public, &r).unwrap_err().contains("models"));
        // An update's covers its hash, version and address.
        let mut u = firmware::proto::UpdateRef {
            sha256: sha.clone(),
            version: "1.0".into(),
            size: 9,
            url: "http://hub:8080/api/v1/updates/x/file".into(),
            signature: String::new(),
        };
        u.signature = sign_update(&key, &u);
        assert_eq!(verify_update(&public, &u), Ok(()));
        let mut moved = u.clone();
        moved.url = "http://169.254.169.254/".into();
        assert!(verify_update(&public, &moved).is_err());
        r.signature = sign_model(&key, &r);
        assert_eq!(verify_model(&public, &r), Ok(()));
        let changes: [fn(&mut firmware::proto::ModelRef); 5] = [
            |r| r.kind = "autoencoder".into(),
            |r| r.sha256 = r.fixture_sha256.clone(),
            |r| r.fixture_sha256 = r.sha256.clone(),
            |r| r.url = "http://169.254.169.254/latest/meta-data".into(),
            |r| r.fixture_url = "http://hub/m".into(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = r.clone();
            change(&mut other);
            assert!(verify_model(&public, &other).is_err(), "change {i}");
        }
        // Name, version and size are what the hub says of it, not what is checked.
        let mut named = r.clone();
        named.version = "2".into();
        assert_eq!(verify_model(&public, &named), Ok(()));
        // A configuration's signature is not a model's.
        assert!(verify(&public, "classifier", 0, &sha, &r.signature).is_err());
        // A command's covers its device, id, command and time.
        let c = sign_command(&key, "tap-1", 4, "reload", 99);
        assert_eq!(verify_command(&public, "tap-1", 4, "reload", 99, &c), Ok(()));
        for (d, id, cmd, ts) in [
            ("tap-2", 4, "reload", 99),
            ("tap-1", 5, "reload", 99),
            ("tap-1", 4, "retry_config", 99),
            ("tap-1", 4, "reload", 98),
        ] {
            assert!(verify_command(&public, d, id, cmd, ts, &c).is_err(), "{d} {id} {cmd} {ts}");
        }
    }

    #[test]
    fn test_layers_merge_in_order_and_null_removes() {
        let global =
            json!({"detect": {"quiet_s": 60, "update_s": 20}, "store": {"max_age_hours": 24}});
        let group = json!({"detect": {"quiet_s": 90}, "capture": {"*": {"sample": 2}}});
        let device = json!({"store": null, "capture": {"eth1": {"sample": 1}}});
        let doc = merge([&global, &group, &device]);
        assert_eq!(
            doc,
            json!({"detect": {"quiet_s": 90, "update_s": 20},
                   "capture": {"*": {"sample": 2}, "eth1": {"sample": 1}}})
        );
        // The hash does not depend on the order keys were written in.
        let same: Value = serde_json::from_str(
            r#"{"capture": {"eth1": {"sample": 1}, "*": {"sample": 2}},
                "detect": {"update_s": 20, "quiet_s": 90}}"#,
        )
        .unwrap();
        assert_eq!(hash(&doc), hash(&same));
        assert_eq!(hash(&doc).len(), 64);
        assert_ne!(hash(&doc), hash(&global));
    }

    #[test]
    fn test_a_document_lays_over_the_edges_own_file() {
        let doc = json!({
            "capture": {"*": {"rules": [{"name": "web", "port": 80}]}, "eth2": {"sample": 3}},
            "detect": {"quiet_s": 45, "thresholds": {"port_scan_ports": 99.0}},
            "store": {"max_age_hours": 12},
            "sync": {"metrics_interval_s": 15}
        });
        let (c, notes) = apply(&edge(), &doc).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(c.device.id, "tap-1");
        // eth1 has no entry of its own: "*" replaces its rules; eth2's own entry wins.
        assert_eq!(c.interfaces[0].rules.len(), 1);
        assert_eq!(c.interfaces[0].rules[0].port, Some(80));
        assert_eq!(c.interfaces[1].sample, 3);
        assert!(c.interfaces[1].rules.is_empty());
        assert_eq!(c.detect.quiet_s, 45);
        assert_eq!(c.detect.thresholds.port_scan_ports, 99.0);
        assert_eq!(c.store.max_age_hours, 12);
        assert_eq!(c.store.path, edge().store.path);
        assert_eq!(c.sync.metrics_interval_s, 15);
        assert_eq!(c.sync.broker, edge().sync.broker);
        let (_, notes) = apply(&edge(), &json!({"capture": {"eth9": {"sample": 2}}})).unwrap();
        assert_eq!(notes, ["capture.eth9: this edge has no such interface"]);
    }

    #[test]
    fn test_what_the_hub_may_not_set_is_refused_by_name() {
        for (doc, field) in [
            (json!({"sync": {"broker": "evil:1883"}}), "sync.broker"),
            (json!({"sync": {"config_public_key": "AAAA"}}), "sync.config_public_key"),
            (json!({"store": {"path": "/etc/passwd"}}), "store.path"),
            (json!({"device": {"id": "other"}}), "device:"),
            (json!({"capture": {"eth1": {"snaplen": 64}}}), "capture.eth1.snaplen"),
            (json!({"capture": []}), "capture:"),
            (json!([1, 2]), "JSON object"),
        ] {
            let p = check(&doc);
            assert!(p.iter().any(|p| p.contains(field)), "{doc}: {p:?}");
            assert!(apply(&edge(), &doc).is_err());
        }
    }

    #[test]
    fn test_values_are_checked_as_at_start_up() {
        for (doc, field) in [
            (
                json!({"capture": {"eth1": {"rules": [{"name": "x", "bpf": "port nonsense"}]}}}),
                "does not compile",
            ),
            (json!({"capture": {"*": {"sample": 0}}}), "sample"),
            (
                json!({"detect": {"thresholds": {"port_scan_ports": -1.0}}}),
                "detect.thresholds.port_scan_ports",
            ),
            (json!({"detect": {"thresholds": {"no_such": 1.0}}}), "no_such"),
            (json!({"detect": {"quiet_s": "soon"}}), "detect.quiet_s"),
            (json!({"detect": {"suppress": [{"name": "all"}]}}), "detect.suppress[0]"),
            (json!({"store": {"max_size_mb": 1}}), "store.max_size_mb"),
            (json!({"sync": {"metrics_interval_s": 0}}), "sync.metrics_interval_s"),
        ] {
            let p = check(&doc);
            assert!(p.iter().any(|p| p.contains(field)), "{doc}: {p:?}");
        }
        assert!(check(&json!({})).is_empty());
        assert!(check(
            &json!({"capture": {"*": {"rules": [{"name": "x", "bpf": "tcp port 80"}]}}})
        )
        .is_empty());
    }
}
