//! Models at the hub: uploaded, checked as an edge checks them, kept, and named to the edges.
//!
//! An upload is an ONNX file made by `models/train.py` and its fixture (`fixtures/<model>.json`:
//! rows and the outputs onnxruntime gave for them). [`check`] loads the file with the edge's own
//! code ([`edge_model::Model`]: metadata, features, a row run) and runs the fixture's rows on it
//! ([`edge_model::Model::check_fixture`]); only then is it kept ([`save`]), named by the SHA-256
//! of its file. The fleet's configuration names models by that hash (`models.classifier`);
//! [`unknown`] holds a document to models that are here, of the slot it names them for, and
//! [`refs`] says where edges fetch each one and signs it with the hub's key.

use edge_model::{sha256_hex, Fixture, Model};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

/// The largest model file taken, bytes (the shipped ones are 20 KB).
pub const MAX_MODEL_BYTES: usize = 32 << 20;

/// The largest fixture taken, bytes (the shipped ones are 150 KB).
pub const MAX_FIXTURE_BYTES: usize = 16 << 20;

/// A model kept at the hub (without its bytes).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// SHA-256 of the ONNX file: what the fleet's configuration names.
    pub sha256: String,
    /// `autoencoder` or `classifier`: the slot it goes in.
    pub kind: String,
    pub name: String,
    pub version: String,
    #[schema(value_type = Vec<String>)]
    pub features: Value,
    #[schema(value_type = Vec<String>)]
    pub classes: Value,
    /// Bytes of the ONNX file.
    pub size: i64,
    pub fixture_sha256: String,
    /// Rows of the fixture run at upload.
    pub fixture_rows: i32,
    pub author: String,
    pub comment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const INFO_SELECT: &str = "SELECT sha256, kind, name, version, features, classes, size, \
                           fixture_sha256, fixture_rows, author, comment, created_at FROM models";

fn info_of(r: &tokio_postgres::Row) -> ModelInfo {
    ModelInfo {
        sha256: r.get(0),
        kind: r.get(1),
        name: r.get(2),
        version: r.get(3),
        features: r.get(4),
        classes: r.get(5),
        size: r.get(6),
        fixture_sha256: r.get(7),
        fixture_rows: r.get(8),
        author: r.get(9),
        comment: r.get(10),
        created_at: r.get(11),
    }
}

/// A model and its fixture, checked.
#[derive(Debug)]
pub struct Checked {
    pub sha256: String,
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
    pub classes: Vec<String>,
    pub fixture_sha256: String,
    pub fixture_rows: usize,
}

/// Check a model file and its fixture as an edge would before it runs the model. CPU-bound
/// (tract optimises the graph): call it off the async threads. The error names what is wrong:
/// `(field, problem)`.
pub fn check(onnx: &[u8], fixture: &[u8]) -> Result<Checked, (&'static str, String)> {
    if onnx.len() > MAX_MODEL_BYTES {
        return Err(("model", format!("over {MAX_MODEL_BYTES} bytes")));
    }
    if fixture.len() > MAX_FIXTURE_BYTES {
        return Err(("fixture", format!("over {MAX_FIXTURE_BYTES} bytes")));
    }
    let model = Model::from_bytes_any(onnx, std::path::Path::new("model"))
        .map_err(|e| ("model", e.to_string()))?;
    let f: Fixture = serde_json::from_slice(fixture).map_err(|e| {
        ("fixture", format!("not a fixture (models/train.py's fixtures/<model>.json): {e}"))
    })?;
    model.check_fixture(&f).map_err(|e| ("fixture", e))?;
    Ok(Checked {
        sha256: sha256_hex(onnx),
        kind: model.kind.as_str(),
        name: model.name.clone(),
        version: model.version.clone(),
        features: model.features.iter().map(|f| f.to_string()).collect(),
        classes: model.classes.clone(),
        fixture_sha256: sha256_hex(fixture),
        fixture_rows: f.normalised.len(),
    })
}

/// Keep a checked model; `false` if it was here already (the same file: kept as it was).
pub async fn save(
    c: &impl GenericClient,
    m: &Checked,
    onnx: &[u8],
    fixture: &[u8],
    author: &str,
    comment: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n = c
        .execute(
            "INSERT INTO models (sha256, kind, name, version, features, classes, size, onnx,
                                 fixture_sha256, fixture, fixture_rows, author, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (sha256) DO NOTHING",
            &[
                &m.sha256,
                &m.kind,
                &m.name,
                &m.version,
                &serde_json::json!(m.features),
                &serde_json::json!(m.classes),
                &(onnx.len() as i64),
                &onnx,
                &m.fixture_sha256,
                &fixture,
                &(m.fixture_rows as i32),
                &author,
                &comment,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Every model kept, newest first.
pub async fn list(c: &impl GenericClient) -> Result<Vec<ModelInfo>, tokio_postgres::Error> {
    let q = format!("{INFO_SELECT} ORDER BY created_at DESC, sha256");
    Ok(c.query(&q, &[]).await?.iter().map(info_of).collect())
}

/// One model by its hash.
pub async fn get(
    c: &impl GenericClient,
    sha256: &str,
) -> Result<Option<ModelInfo>, tokio_postgres::Error> {
    let q = format!("{INFO_SELECT} WHERE sha256 = $1");
    Ok(c.query_opt(&q, &[&sha256]).await?.as_ref().map(info_of))
}

/// The bytes of a model's file (`fixture` false) or of its fixture, by the model's hash.
pub async fn bytes(
    c: &impl GenericClient,
    sha256: &str,
    fixture: bool,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    let q = if fixture {
        "SELECT fixture FROM models WHERE sha256 = $1"
    } else {
        "SELECT onnx FROM models WHERE sha256 = $1"
    };
    Ok(c.query_opt(q, &[&sha256]).await?.map(|r| r.get(0)))
}

/// Problems with the models a fleet document names: each must be kept here, and be a model of
/// the slot it is named for.
pub async fn unknown(
    c: &impl GenericClient,
    doc: &Value,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut p = Vec::new();
    for (slot, sha) in edge_config::fleet::models(doc) {
        if sha.is_empty() {
            continue;
        }
        match c.query_opt("SELECT kind FROM models WHERE sha256 = $1", &[&sha]).await? {
            None => p.push(format!("models.{slot}: no model {sha} was uploaded to this hub")),
            Some(r) if r.get::<_, &str>(0) != slot => p.push(format!(
                "models.{slot}: model {sha} is an {}, not a {slot}",
                r.get::<_, &str>(0)
            )),
            Some(_) => {}
        }
    }
    Ok(p)
}

/// Where edges fetch each model `doc` names, signed with `key` when the hub has one. `base` is
/// the hub's address as edges reach it (`http://hub:8080`).
pub async fn refs(
    c: &impl GenericClient,
    doc: &Value,
    base: &str,
    key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Vec<firmware::proto::ModelRef>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for (slot, sha) in edge_config::fleet::models(doc) {
        if sha.is_empty() {
            continue;
        }
        let Some(m) = get(c, &sha).await? else { continue };
        let base = base.trim_end_matches('/');
        let mut r = firmware::proto::ModelRef {
            kind: slot.to_string(),
            url: format!("{base}/api/v1/models/{sha}/file"),
            fixture_url: format!("{base}/api/v1/models/{sha}/fixture"),
            sha256: sha,
            fixture_sha256: m.fixture_sha256,
            size: m.size as u64,
            name: m.name,
            version: m.version,
            signature: String::new(),
        };
        if let Some(k) = key {
            r.signature = edge_config::fleet::sign_model(k, &r);
        }
        out.push(r);
    }
    Ok(out)
}
