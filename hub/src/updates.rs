//! Updates of the edge program at the hub: uploaded, checked as an edge reads them, kept, and
//! named to the edges.
//!
//! A bundle is made and signed by `tapwatch-edge update pack` with the release key, which the
//! hub does not hold: a hub broken into can name a bundle, never make one an edge installs.
//! [`check`] reads it with the edge's own code ([`edge_config::update::read`]: format, every
//! file's size and hash; the signature too when `fleet.update_public_key` is set); only then is
//! it kept ([`save`]), named by the SHA-256 of its file. The fleet's configuration names one by
//! that hash (`update`); [`unknown`] holds a document to bundles kept here, and [`update_ref`]
//! says where edges fetch it, signed with the hub's key.

use edge_model::sha256_hex;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

/// The largest bundle taken, bytes (a stripped release of the edge is about 20 MB).
pub const MAX_BUNDLE_BYTES: usize = 128 << 20;

/// A bundle kept at the hub (without its bytes).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UpdateInfo {
    /// SHA-256 of the bundle: what the fleet's configuration names.
    pub sha256: String,
    pub version: String,
    /// The architecture it is built for (`aarch64`, `x86_64`).
    pub arch: String,
    /// Bytes of the bundle.
    pub size: i64,
    /// Its manifest: each file's name, size, mode and SHA-256.
    #[schema(value_type = Object)]
    pub manifest: Value,
    pub author: String,
    pub comment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const INFO_SELECT: &str =
    "SELECT sha256, version, arch, size, manifest, author, comment, created_at FROM updates";

fn info_of(r: &tokio_postgres::Row) -> UpdateInfo {
    UpdateInfo {
        sha256: r.get(0),
        version: r.get(1),
        arch: r.get(2),
        size: r.get(3),
        manifest: r.get(4),
        author: r.get(5),
        comment: r.get(6),
        created_at: r.get(7),
    }
}

/// A bundle, checked: its hash and manifest.
#[derive(Debug)]
pub struct Checked {
    pub sha256: String,
    pub manifest: edge_config::update::Manifest,
}

/// Read a bundle as an edge does (every file hashed; the release key's signature when
/// `public_key` is given). CPU-bound: call it off the async threads.
pub fn check(bundle: &[u8], public_key: Option<&str>) -> Result<Checked, String> {
    if bundle.len() > MAX_BUNDLE_BYTES {
        return Err(format!("over {MAX_BUNDLE_BYTES} bytes"));
    }
    let manifest =
        edge_config::update::read(bundle, public_key, None, None).map_err(|e| e.to_string())?;
    Ok(Checked { sha256: sha256_hex(bundle), manifest })
}

/// Keep a checked bundle; `false` if it was here already.
pub async fn save(
    c: &impl GenericClient,
    u: &Checked,
    bundle: &[u8],
    author: &str,
    comment: &str,
) -> Result<bool, tokio_postgres::Error> {
    let manifest = serde_json::to_value(&u.manifest).unwrap_or_default();
    let n = c
        .execute(
            "INSERT INTO updates (sha256, version, arch, size, manifest, bundle, author, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (sha256) DO NOTHING",
            &[
                &u.sha256,
                &u.manifest.version,
                &u.manifest.arch,
                &(bundle.len() as i64),
                &manifest,
                &bundle,
                &author,
                &comment,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Every bundle kept, newest first.
pub async fn list(c: &impl GenericClient) -> Result<Vec<UpdateInfo>, tokio_postgres::Error> {
    let q = format!("{INFO_SELECT} ORDER BY created_at DESC, sha256");
    Ok(c.query(&q, &[]).await?.iter().map(info_of).collect())
}

/// One bundle by its hash.
pub async fn get(
    c: &impl GenericClient,
    sha256: &str,
) -> Result<Option<UpdateInfo>, tokio_postgres::Error> {
    let q = format!("{INFO_SELECT} WHERE sha256 = $1");
    Ok(c.query_opt(&q, &[&sha256]).await?.as_ref().map(info_of))
}

/// A bundle's bytes.
pub async fn bytes(
    c: &impl GenericClient,
    sha256: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(c.query_opt("SELECT bundle FROM updates WHERE sha256 = $1", &[&sha256])
        .await?
        .map(|r| r.get(0)))
}

/// Problems with the update a fleet document names: it must be kept here.
pub async fn unknown(
    c: &impl GenericClient,
    doc: &Value,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let Some(sha) = edge_config::fleet::update(doc) else { return Ok(Vec::new()) };
    Ok(match get(c, &sha).await? {
        Some(_) => Vec::new(),
        None => vec![format!("update: no update bundle {sha} was uploaded to this hub")],
    })
}

/// Where edges fetch the update `doc` names, signed with `key` when the hub has one. `base` is
/// the hub's address as edges reach it.
pub async fn update_ref(
    c: &impl GenericClient,
    doc: &Value,
    base: &str,
    key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Option<firmware::proto::UpdateRef>, tokio_postgres::Error> {
    let Some(sha) = edge_config::fleet::update(doc) else { return Ok(None) };
    let Some(u) = get(c, &sha).await? else { return Ok(None) };
    let mut r = firmware::proto::UpdateRef {
        url: format!("{}/api/v1/updates/{sha}/file", base.trim_end_matches('/')),
        sha256: sha,
        version: u.version,
        size: u.size as u64,
        signature: String::new(),
    };
    if let Some(k) = key {
        r.signature = edge_config::fleet::sign_update(k, &r);
    }
    Ok(Some(r))
}
