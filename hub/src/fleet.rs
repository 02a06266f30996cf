//! Fleet configuration at the hub: layers and their revisions, each device's desired
//! configuration, its delivery, and what each device reports running.
//!
//! An operator sets documents of the edge's runtime configuration ([`edge_config::fleet`]) in
//! three layers: global, per device group, per device. Each change is a revision of its layer
//! (`config_revisions`: number, hash, author, time, comment), checked first with the edge's own
//! code (BPF compiled with libpcap, thresholds in range, only what the hub may set). After each
//! change [`refresh`] merges the layers of every device (global, its group's, its own); a device
//! whose merged document changed gets a new desired revision (`device_config`, from one
//! sequence, so it only grows; a rollback is a new revision with an earlier content). The ingest
//! loop hands every desired revision not yet published to the broker, retained on the device's
//! `config` topic ([`firmware::proto::ConfigMsg`]), so an edge that was offline takes the newest
//! when it connects. Edges answer on `config/applied` and name the revision and hash in force in
//! each status message ([`record_applied`], [`record_status`]); [`fleet`] compares desired
//! with applied for the dashboard.

use edge_config::fleet as doc;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

/// A layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Global,
    Group(String),
    Device(String),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Group(_) => "group",
            Scope::Device(_) => "device",
        }
    }
    pub fn target(&self) -> &str {
        match self {
            Scope::Global => "",
            Scope::Group(t) | Scope::Device(t) => t,
        }
    }
    /// As the audit log names it.
    pub fn path(&self) -> String {
        match self {
            Scope::Global => "config/global".into(),
            Scope::Group(g) => format!("config/group/{g}"),
            Scope::Device(d) => format!("config/device/{d}"),
        }
    }
    fn of(kind: &str, target: String) -> Scope {
        match kind {
            "group" => Scope::Group(target),
            "device" => Scope::Device(target),
            _ => Scope::Global,
        }
    }
}

/// One revision of a layer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Revision {
    /// Unique over every layer (what a rollback names).
    pub id: i64,
    /// global, group or device.
    pub scope: String,
    /// The group or device; empty for global.
    pub target: String,
    /// From 1 per layer.
    pub revision: i32,
    pub document: Value,
    pub hash: String,
    pub author: String,
    pub comment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const REVISION_SELECT: &str = "SELECT id, scope, target, revision, document, hash, author, \
                               comment, created_at FROM config_revisions";

fn revision_of(r: &tokio_postgres::Row) -> Revision {
    Revision {
        id: r.get(0),
        scope: r.get(1),
        target: r.get(2),
        revision: r.get(3),
        document: r.get(4),
        hash: r.get(5),
        author: r.get(6),
        comment: r.get(7),
        created_at: r.get(8),
    }
}

/// Why a change was not saved.
#[derive(Debug)]
pub enum SaveError {
    /// The document, or a device's merge with it, does not check: every problem, each naming
    /// its field.
    Invalid(Vec<String>),
    /// No such group or device.
    NoTarget(String),
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SaveError {
    fn from(e: tokio_postgres::Error) -> Self {
        SaveError::Db(e)
    }
}

/// The newest revision of a layer.
pub async fn current(
    c: &impl GenericClient,
    scope: &Scope,
) -> Result<Option<Revision>, tokio_postgres::Error> {
    let q = format!(
        "{REVISION_SELECT} WHERE scope = $1 AND target = $2 ORDER BY revision DESC LIMIT 1"
    );
    Ok(c.query_opt(&q, &[&scope.kind(), &scope.target()]).await?.as_ref().map(revision_of))
}

/// A layer's revisions, newest first.
pub async fn history(
    c: &impl GenericClient,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<Revision>, tokio_postgres::Error> {
    let q = format!(
        "{REVISION_SELECT} WHERE scope = $1 AND target = $2 ORDER BY revision DESC LIMIT $3"
    );
    Ok(c.query(&q, &[&scope.kind(), &scope.target(), &limit])
        .await?
        .iter()
        .map(revision_of)
        .collect())
}

/// One revision by id, with its layer.
pub async fn revision(
    c: &impl GenericClient,
    id: i64,
) -> Result<Option<(Scope, Revision)>, tokio_postgres::Error> {
    let q = format!("{REVISION_SELECT} WHERE id = $1");
    Ok(c.query_opt(&q, &[&id]).await?.as_ref().map(|r| {
        let rev = revision_of(r);
        (Scope::of(&rev.scope, rev.target.clone()), rev)
    }))
}

/// Save a new revision of a layer and refresh every device's desired configuration, in one
/// transaction: a document that does not check, or that makes some device's merged
/// configuration not check, is refused whole.
pub async fn save(
    tx: &tokio_postgres::Transaction<'_>,
    scope: &Scope,
    document: &Value,
    author: &str,
    comment: &str,
) -> Result<Revision, SaveError> {
    let mut problems = doc::check(document);
    problems.extend(crate::models::unknown(tx, document).await?);
    problems.extend(crate::updates::unknown(tx, document).await?);
    if !problems.is_empty() {
        return Err(SaveError::Invalid(problems));
    }
    let exists = match scope {
        Scope::Global => true,
        Scope::Group(g) => {
            tx.query_opt("SELECT 1 FROM device_groups WHERE name = $1", &[g]).await?.is_some()
        }
        Scope::Device(d) => {
            tx.query_opt("SELECT 1 FROM devices WHERE id = $1", &[d]).await?.is_some()
        }
    };
    if !exists {
        return Err(SaveError::NoTarget(format!("no {} {:?}", scope.kind(), scope.target())));
    }
    // One change at a time, fleet-wide: revisions are numbered and devices merged in order.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('tapwatch_fleet'))", &[]).await?;
    let row = tx
        .query_one(
            "INSERT INTO config_revisions (scope, target, revision, document, hash, author, comment)
             SELECT $1, $2, COALESCE(max(revision), 0) + 1, $3, $4, $5, $6
             FROM config_revisions WHERE scope = $1 AND target = $2
             RETURNING id, scope, target, revision, document, hash, author, comment, created_at",
            &[&scope.kind(), &scope.target(), document, &doc::hash(document), &author, &comment],
        )
        .await?;
    let problems = refresh(tx).await?;
    if !problems.is_empty() {
        return Err(SaveError::Invalid(problems));
    }
    Ok(revision_of(&row))
}

/// Merge every device's layers; a device whose merged document changed gets a new desired
/// revision. Returns the problems of devices whose merged document does not check (their
/// desired configuration stays as it was).
pub async fn refresh(c: &impl GenericClient) -> Result<Vec<String>, tokio_postgres::Error> {
    let layers = c
        .query(
            "SELECT DISTINCT ON (scope, target) id, scope, target, document FROM config_revisions
             ORDER BY scope, target, revision DESC",
            &[],
        )
        .await?;
    let layer = |kind: &str, target: &str| {
        layers
            .iter()
            .find(|r| r.get::<_, &str>(1) == kind && r.get::<_, &str>(2) == target)
            .map(|r| (r.get::<_, i64>(0), r.get::<_, Value>(3)))
    };
    let devices = c
        .query(
            "SELECT d.id, d.group_name, c.desired_hash FROM devices d
             LEFT JOIN device_config c ON c.device = d.id ORDER BY d.id",
            &[],
        )
        .await?;
    let mut problems = Vec::new();
    for d in &devices {
        let (id, group, had): (String, Option<String>, Option<String>) =
            (d.get(0), d.get(1), d.get(2));
        let parts: Vec<(i64, Value)> = [
            layer("global", ""),
            group.as_deref().and_then(|g| layer("group", g)),
            layer("device", &id),
        ]
        .into_iter()
        .flatten()
        .collect();
        let merged = doc::merge(parts.iter().map(|(_, v)| v));
        // Unchanged: it was checked when it became the desired one. (A check compiles every
        // capture rule's BPF: done for every device every refresh, it grew with the fleet.)
        let hash = doc::hash(&merged);
        if had.as_deref() == Some(hash.as_str()) {
            continue;
        }
        let p = doc::check(&merged);
        if !p.is_empty() {
            problems.extend(p.into_iter().map(|p| format!("device {id}: {p}")));
            continue;
        }
        let ids: Vec<i64> = parts.iter().map(|(i, _)| *i).collect();
        c.execute(
            "INSERT INTO device_config (device, desired_revision, desired_hash, desired, layers, desired_at)
             VALUES ($1, nextval('device_config_revision'), $2, $3, $4, now())
             ON CONFLICT (device) DO UPDATE SET desired_revision = EXCLUDED.desired_revision,
                 desired_hash = $2, desired = $3, layers = $4, desired_at = now()
             WHERE device_config.desired_hash <> $2",
            &[&id, &hash, &merged, &ids],
        )
        .await?;
    }
    Ok(problems)
}

/// Desired configurations not yet handed to the broker: (device, revision, the `config`
/// message, signed with `key` if there is one, with where to fetch the models it names from
/// `model_base`: the hub's address as edges reach it).
pub async fn unpublished(
    c: &impl GenericClient,
    key: Option<&ed25519_dalek::SigningKey>,
    model_base: &str,
) -> Result<Vec<(String, i64, Vec<u8>)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT device, desired_revision, desired_hash, desired FROM device_config
             WHERE published_revision < desired_revision ORDER BY device LIMIT 1000",
            &[],
        )
        .await?;
    let now = crate::ingest::now_us();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (device, revision, hash, config): (String, i64, String, Value) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let models = crate::models::refs(c, &config, model_base, key).await?;
        let update = crate::updates::update_ref(c, &config, model_base, key).await?;
        let (Ok(id), Ok(rev), Ok(h)) =
            (device.as_str().try_into(), u64::try_from(revision), hash.as_str().try_into())
        else {
            continue;
        };
        let msg = firmware::proto::ConfigMsg {
            schema: firmware::proto::SCHEMA_VERSION,
            device: id,
            ts: now,
            revision: rev,
            hash: h,
            config: match config {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            models,
            update,
            signature: key.map(|k| doc::sign(k, &device, rev, &hash)).unwrap_or_default(),
        };
        if let Ok(payload) = serde_json::to_vec(&msg) {
            out.push((device, revision, payload));
        }
    }
    Ok(out)
}

/// A desired revision is with the broker.
pub async fn published(
    c: &impl GenericClient,
    device: &str,
    revision: i64,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE device_config SET published_revision = $2
         WHERE device = $1 AND published_revision < $2",
        &[&device, &revision],
    )
    .await
    .map(|_| ())
}

fn at(ts_us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// An edge's answer to a configuration (newer answers than the one kept, by the edge's time).
pub async fn record_applied(
    c: &impl GenericClient,
    m: &firmware::proto::ConfigAppliedMsg,
) -> Result<(), tokio_postgres::Error> {
    let result = serde_json::to_value(m.result).unwrap_or_default();
    let result = result.as_str().unwrap_or("refused");
    let (revision, ts) = (m.revision as i64, at(m.ts));
    c.execute(
        "INSERT INTO device_config (device) VALUES ($1) ON CONFLICT (device) DO NOTHING",
        &[&m.device.as_str()],
    )
    .await?;
    c.execute(
        "UPDATE device_config SET result_revision = $2, result = $3, error = $4, result_at = $5
         WHERE device = $1 AND (result_at IS NULL OR result_at <= $5)",
        &[&m.device.as_str(), &revision, &result, &m.error.as_str(), &ts],
    )
    .await?;
    if result == "applied" {
        set_applied(c, m.device.as_str(), revision, m.hash.as_str(), ts).await?;
    }
    Ok(())
}

/// A command for a device, as the hub keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandRow {
    pub id: i64,
    pub device: String,
    /// `reload` or `retry_config`.
    pub command: String,
    pub author: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was handed to the broker; null: not yet.
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    /// The edge's answer: applied (done), refused or failed; null: none yet.
    pub result: Option<String>,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub result_at: Option<OffsetDateTime>,
}

const COMMAND_SELECT: &str = "SELECT id, device, command, author, created_at, published_at, \
                              result, detail, result_at FROM device_commands";

fn command_of(r: &tokio_postgres::Row) -> CommandRow {
    CommandRow {
        id: r.get(0),
        device: r.get(1),
        command: r.get(2),
        author: r.get(3),
        created_at: r.get(4),
        published_at: r.get(5),
        result: r.get(6),
        detail: r.get(7),
        result_at: r.get(8),
    }
}

/// Queue a command for a device (the ingest sends it, woken by the live feed); `None` if there
/// is no such device.
pub async fn command(
    c: &impl GenericClient,
    device: &str,
    command: firmware::proto::Command,
    author: &str,
) -> Result<Option<CommandRow>, tokio_postgres::Error> {
    let name = serde_json::to_value(command).unwrap_or_default();
    let q = "INSERT INTO device_commands (device, command, author)
             SELECT id, $2, $3 FROM devices WHERE id = $1
             RETURNING id, device, command, author, created_at, published_at, result, detail, result_at";
    Ok(c.query_opt(q, &[&device, &name.as_str().unwrap_or_default(), &author])
        .await?
        .as_ref()
        .map(command_of))
}

/// A device's commands, newest first.
pub async fn commands(
    c: &impl GenericClient,
    device: &str,
    limit: i64,
) -> Result<Vec<CommandRow>, tokio_postgres::Error> {
    let q = format!("{COMMAND_SELECT} WHERE device = $1 ORDER BY id DESC LIMIT $2");
    Ok(c.query(&q, &[&device, &limit]).await?.iter().map(command_of).collect())
}

/// Commands not yet handed to the broker, oldest first: (id, device, the `commands` message,
/// signed with `key` if there is one). One older than a minute is not sent: a command is for
/// now (it is answered `failed` by the hub instead, [`expire_commands`]).
pub async fn unpublished_commands(
    c: &impl GenericClient,
    key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Vec<(i64, String, Vec<u8>)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT id, device, command FROM device_commands
             WHERE published_at IS NULL AND created_at > now() - interval '1 minute'
             ORDER BY id LIMIT 1000",
            &[],
        )
        .await?;
    let now = crate::ingest::now_us();
    let mut out = Vec::new();
    for r in &rows {
        let (id, device, name): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        let Ok(command) = serde_json::from_value(Value::String(name.clone())) else { continue };
        let Ok(dev) = device.as_str().try_into() else { continue };
        let msg = firmware::proto::CommandMsg {
            schema: firmware::proto::SCHEMA_VERSION,
            device: dev,
            ts: now,
            id: id as u64,
            command,
            signature: key
                .map(|k| doc::sign_command(k, &device, id as u64, &name, now))
                .unwrap_or_default(),
        };
        if let Ok(payload) = serde_json::to_vec(&msg) {
            out.push((id, device, payload));
        }
    }
    Ok(out)
}

/// A command is with the broker.
pub async fn command_published(
    c: &impl GenericClient,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    c.execute("UPDATE device_commands SET published_at = now() WHERE id = $1", &[&id])
        .await
        .map(|_| ())
}

/// Commands the ingest could not send within a minute (the broker away): answered as failed.
pub async fn expire_commands(c: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        "UPDATE device_commands SET result = 'failed', result_at = now(),
             detail = 'not sent within a minute (the broker could not be reached); not sent'
         WHERE published_at IS NULL AND result IS NULL AND created_at <= now() - interval '1 minute'",
        &[],
    )
    .await
}

/// An edge's answer to a command (the first answer counts: an id is done once).
pub async fn record_command(
    c: &impl GenericClient,
    m: &firmware::proto::CommandResultMsg,
) -> Result<(), tokio_postgres::Error> {
    let result = serde_json::to_value(m.result).unwrap_or_default();
    c.execute(
        "UPDATE device_commands SET result = $3, detail = $4, result_at = $5
         WHERE id = $1 AND device = $2 AND result IS NULL",
        &[
            &(m.id.min(i64::MAX as u64) as i64),
            &m.device.as_str(),
            &result.as_str().unwrap_or("refused"),
            &m.detail.as_str(),
            &at(m.ts),
        ],
    )
    .await
    .map(|_| ())
}

/// The revision and hash a status message names as in force.
pub async fn record_status(
    c: &impl GenericClient,
    s: &firmware::proto::StatusMsg,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO device_config (device) VALUES ($1) ON CONFLICT (device) DO NOTHING",
        &[&s.device.as_str()],
    )
    .await?;
    set_applied(c, s.device.as_str(), s.config_revision as i64, s.config_hash.as_str(), at(s.ts))
        .await
}

async fn set_applied(
    c: &impl GenericClient,
    device: &str,
    revision: i64,
    hash: &str,
    ts: OffsetDateTime,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE device_config SET applied_revision = $2, applied_hash = $3, applied_at = $4
         WHERE device = $1 AND (applied_at IS NULL OR applied_at <= $4)",
        &[&device, &revision, &hash, &ts],
    )
    .await
    .map(|_| ())
}

/// A device's configuration: desired against applied.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceSync {
    pub device: String,
    pub group: Option<String>,
    /// online, offline or unknown (its status topic).
    pub state: String,
    /// in_sync (it runs the desired configuration), pending (sent, not yet answered), failed
    /// (it refused the desired revision or could not apply it: `error`), offline (not in sync
    /// and not connected).
    pub sync: String,
    pub desired_revision: i64,
    pub desired_hash: String,
    pub applied_revision: i64,
    pub applied_hash: String,
    /// The answer to the newest revision it answered.
    pub result_revision: i64,
    pub result: Option<String>,
    pub error: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub desired_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub applied_at: Option<OffsetDateTime>,
}

/// Every device's configuration state (or one device's).
pub async fn fleet(
    c: &impl GenericClient,
    device: Option<&str>,
) -> Result<Vec<DeviceSync>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT d.id, d.group_name, d.state, COALESCE(c.desired_revision, 0),
                    COALESCE(c.desired_hash, ''), COALESCE(c.applied_revision, 0),
                    COALESCE(c.applied_hash, ''), COALESCE(c.result_revision, 0), c.result,
                    COALESCE(c.error, ''), c.desired_at, c.applied_at
             FROM devices d LEFT JOIN device_config c ON c.device = d.id
             WHERE $1::text IS NULL OR d.id = $1 ORDER BY d.id",
            &[&device],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut d = DeviceSync {
                device: r.get(0),
                group: r.get(1),
                state: r.get(2),
                sync: String::new(),
                desired_revision: r.get(3),
                desired_hash: r.get(4),
                applied_revision: r.get(5),
                applied_hash: r.get(6),
                result_revision: r.get(7),
                result: r.get(8),
                error: r.get(9),
                desired_at: r.get(10),
                applied_at: r.get(11),
            };
            d.sync = sync_state(&d).into();
            d
        })
        .collect())
}

fn sync_state(d: &DeviceSync) -> &'static str {
    if !d.desired_hash.is_empty() && d.applied_hash == d.desired_hash {
        "in_sync"
    } else if d.result_revision == d.desired_revision
        && d.result.as_deref().is_some_and(|r| r != "applied")
    {
        "failed"
    } else if d.state != "online" {
        "offline"
    } else {
        "pending"
    }
}
