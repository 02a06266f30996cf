//! The command line: `run`, `device add`, `user add`, `migrate`, `config`, `schema` and `check`.

use crate::config::Config;
use crate::contract::decode;
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tapwatch-hub",
    version,
    about = "Tapwatch hub: ingest, storage and API for Tapwatch edges"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest what the edges send into PostgreSQL until SIGTERM or SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Bring the database schema to the latest version and exit.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Devices allowed to send.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// People and programs allowed to use the API.
    #[command(subcommand)]
    User(UserCommand),
    /// The hub's own identity at the broker.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the public key the edges check the hub's configurations with
    /// (`sync.config_public_key`), making the signing key (`fleet.signing_key_file`) if needed.
    FleetKey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JSON Schema of a stream's message (anomalies, flows, stats, metrics, analyses,
    /// status), as edges publish them.
    Schema { stream: String },
    /// Check an edge message as the hub's ingest would: exit 0 and print a summary if accepted,
    /// exit 65 with the reason if not.
    Check {
        /// The MQTT topic it was (or would be) published on, `tapwatch/v1/<device>/<stream>`.
        #[arg(long)]
        topic: String,
        /// The payload file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device id (its messages are refused until it is registered, unless
    /// ingest.auto_register_devices is set). With the embedded broker, or mqtt.admin_username
    /// set, also give it a new broker password (user name and client id = the id; an old
    /// password stops working); at a Mosquitto, it may then publish only its own streams and
    /// read only its own hub-to-edge topics.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        /// Write the device's broker password here (mode 0600) instead of printing it.
        #[arg(long)]
        password_file: Option<PathBuf>,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Give the hub (mqtt.username, with mqtt.password_file) its identity at the broker: the
    /// subscription to every device's streams, which no device may take, and the
    /// hub-to-edge topics. Needs mqtt.admin_username.
    Init {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is the first line of --password-file, or of standard input.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        /// viewer, analyst or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Example,
    /// Check a configuration file and print every problem found.
    Check { file: PathBuf },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Connect and migrate.
async fn prepare(config: &Config) -> Result<tokio_postgres::Client, String> {
    let mut client = crate::db::connect_to(&config.postgres)
        .await
        .map_err(|e| format!("postgres.url: cannot connect: {e}"))?;
    crate::db::migrate(&mut client).await?;
    Ok(client)
}

/// The API's connection pool.
pub fn pool(config: &Config) -> Result<deadpool_postgres::Pool, String> {
    let pg: tokio_postgres::Config =
        config.postgres.url.parse().map_err(|e| format!("postgres.url: {e}"))?;
    let manager_config = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    let manager = match crate::db::PgTls::from_config(&config.postgres)? {
        crate::db::PgTls::Plain => {
            deadpool_postgres::Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
        }
        crate::db::PgTls::Rustls(tls) => {
            deadpool_postgres::Manager::from_config(pg, tls, manager_config)
        }
    };
    deadpool_postgres::Pool::builder(manager)
        .max_size(config.http.db_connections)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("postgres pool: {e}"))
}

/// The API's state for a configuration (the live listener is started too).
pub fn api_state(config: &Config) -> Result<crate::api::ApiState, String> {
    let live = crate::api::live::Live::default();
    live.start(config.postgres.url.clone(), crate::db::PgTls::from_config(&config.postgres)?);
    Ok(crate::api::ApiState {
        pool: pool(config)?,
        auth: std::sync::Arc::new(crate::api::auth::AuthConfig {
            session_hours: config.http.session_hours,
            cookie_secure: config.http.cookie_secure,
            trusted_proxies: config.http.trusted_proxies.clone(),
        }),
        limiter: std::sync::Arc::new(crate::api::auth::LoginLimiter::new(
            config.http.login_per_minute,
            config.http.login_global_per_minute,
        )),
        live,
        counters: std::sync::Arc::default(),
        update_key: config.fleet.update_public_key.trim().into(),
    })
}

/// With no user yet, the first admin comes from TAPWATCH_ADMIN_USER and
/// TAPWATCH_ADMIN_PASSWORD when they are set.
async fn first_admin(client: &tokio_postgres::Client) -> Result<(), String> {
    let users: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if users > 0 {
        return Ok(());
    }
    match (std::env::var("TAPWATCH_ADMIN_USER"), std::env::var("TAPWATCH_ADMIN_PASSWORD")) {
        (Ok(u), Ok(p)) => {
            crate::api::auth::add_user(client, &u, &p, crate::api::Role::Admin)
                .await
                .map_err(|e| format!("TAPWATCH_ADMIN_USER/PASSWORD: {}", e.detail))?;
            tracing::info!("added the first admin, {u:?}, from the environment");
        }
        _ => tracing::warn!(
            "no users yet: add one with `tapwatch-hub user add --role admin NAME`, or set \
             TAPWATCH_ADMIN_USER and TAPWATCH_ADMIN_PASSWORD"
        ),
    }
    Ok(())
}

fn run_hub(path: &std::path::Path) -> Result<(), String> {
    let mut config = Config::load(path)?;
    let credentials = crate::broker::Credentials::default();
    if config.broker.embedded {
        // The ingest's credential on the embedded broker: made for this process.
        let password = crate::provision::new_password();
        crate::broker::start(&config.broker, credentials.clone(), &password)?;
        config.mqtt.broker = config.broker.listen_v5.to_string();
        config.mqtt.username = crate::broker::INGEST_USER.to_string();
        config.mqtt.password = Some(password);
    }
    runtime()?.block_on(async move {
        if config.broker.embedded {
            let tls = crate::db::PgTls::from_config(&config.postgres)?;
            credentials.watch(config.postgres.url.clone(), tls);
        }
        let client = prepare(&config).await?;
        first_admin(&client).await?;
        drop(client);
        let counters = std::sync::Arc::new(crate::ingest::IngestCounters::default());
        let listener = std::net::TcpListener::bind(config.http.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("http.listen {}: {e}", config.http.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let api = api_state(&config)?;
        // The ingest hears of desired configurations changed (here or at another hub) at once.
        let feed = Some(api.live.subscribe());
        let api_metrics =
            crate::http::ApiMetrics { counters: api.counters.clone(), live: api.live.clone() };
        let state = crate::http::AppState {
            counters: counters.clone(),
            registry: std::sync::Arc::new(crate::http::registry(
                counters.clone(),
                Some(api_metrics),
            )),
        };
        let web_root = (!config.http.web_root.as_os_str().is_empty())
            .then_some(config.http.web_root.as_path());
        match web_root {
            Some(p) if p.join("index.html").is_file() => {
                tracing::info!("dashboard: serving {}", p.display())
            }
            _ => tracing::warn!(
                "dashboard: http.web_root {:?} holds no index.html; / says so",
                config.http.web_root
            ),
        }
        let app = crate::http::app(state, Some(api), web_root)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        serve_http(&config.http, listener, addr, app).await?;
        if config.fleet.model_url.is_empty() {
            let scheme = if config.http.tls_cert_file.as_os_str().is_empty() { "http" } else { "https" };
            let mut at = addr;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                tracing::warn!(
                    "fleet.model_url is not set and http.listen is {}: edges are told to fetch models from {scheme}://{at}; set fleet.model_url to the address they reach this hub at",
                    config.http.listen
                );
            }
            config.fleet.model_url = format!("{scheme}://{at}");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ingest = tokio::spawn(crate::ingest::run(config, counters, stop_rx, feed));
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tracing::info!("hub running");
        // Under systemd (Type=notify): ready once the database is prepared, HTTP listens and
        // the ingest has started; nothing without NOTIFY_SOCKET.
        let notify = |s: &[sd_notify::NotifyState]| {
            if let Err(e) = sd_notify::notify(s) {
                tracing::warn!("cannot tell the service manager {s:?}: {e}");
            }
        };
        notify(&[sd_notify::NotifyState::Ready]);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
        notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
        ingest.await.map_err(|e| e.to_string())?
    })
}

/// Serve the HTTP side on `listener`: HTTPS when `http.tls_cert_file` is set (the certificate
/// and key read again on SIGHUP; a pair that does not load leaves the one in use), else plain.
async fn serve_http(
    http: &crate::config::HttpConfig,
    listener: std::net::TcpListener,
    addr: std::net::SocketAddr,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<
        axum::Router,
        std::net::SocketAddr,
    >,
) -> Result<(), String> {
    if http.tls_cert_file.as_os_str().is_empty() {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        tracing::info!("listening on http://{addr}");
        tokio::spawn(async move { axum::serve(listener, app).await });
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = (http.tls_cert_file.clone(), http.tls_key_file.clone());
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map_err(|e| format!("http.tls_cert_file/tls_key_file: {e}"))?;
    let server = axum_server::from_tcp_rustls(listener, tls.clone()).map_err(|e| e.to_string())?;
    tracing::info!("listening on https://{addr}");
    tokio::spawn(async move { server.serve(app).await });
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!("http: certificate reloaded"),
                Err(e) => tracing::error!("http: certificate not reloaded, the old one stays: {e}"),
            }
        }
    });
    Ok(())
}

/// Write a secret to a new file only its owner reads.
fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{secret}").map_err(|e| format!("{}: {e}", path.display()))
}

fn exit(r: Result<(), String>, code: u8) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapwatch-hub: {e}");
            ExitCode::from(code)
        }
    }
}

pub fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Run { config } => exit(run_hub(&config), 78),
        Command::Migrate { config } => exit(
            Config::load(&config).and_then(|c| runtime()?.block_on(prepare(&c)).map(|_| ())),
            78,
        ),
        Command::Device(DeviceCommand::Add { config, password_file, id }) => exit(
            (|| {
                if !firmware::proto::valid_device_id(&id) {
                    return Err(format!("device id {id:?}: must be 1-64 of A-Z a-z 0-9 _ . -"));
                }
                let c = Config::load(&config)?;
                runtime()?.block_on(async {
                    let client = prepare(&c).await?;
                    let new =
                        crate::db::add_device(&client, &id).await.map_err(|e| e.to_string())?;
                    println!("{id}: {}", if new { "added" } else { "already registered" });
                    if !c.broker.embedded && c.mqtt.admin_username.is_empty() {
                        return Ok(());
                    }
                    let password = crate::provision::new_password();
                    if c.broker.embedded {
                        crate::db::set_device_secret(&client, &id, &password)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    if !c.mqtt.admin_username.is_empty() {
                        let commands =
                            crate::provision::device_commands(&id, &password, &c.mqtt.topic_prefix);
                        crate::provision::apply(&c, commands).await?;
                    }
                    match &password_file {
                        Some(p) => {
                            write_secret(p, &password)?;
                            println!("{id}: broker user {id}, password in {}", p.display());
                        }
                        None => println!("{id}: broker user {id}, password {password}"),
                    }
                    Ok(())
                })
            })(),
            78,
        ),
        Command::Broker(BrokerCommand::Init { config }) => exit(
            (|| {
                let c = Config::load(&config)?;
                let m = &c.mqtt;
                if m.username.is_empty() || m.password_file.as_os_str().is_empty() {
                    return Err("mqtt.username and mqtt.password_file: the hub's identity".into());
                }
                let password =
                    crate::config::read_first_line(&m.password_file, "mqtt.password_file")?;
                let commands = crate::provision::hub_commands(
                    &m.username,
                    &password,
                    &m.subscription(),
                    &m.topic_prefix,
                );
                runtime()?.block_on(crate::provision::apply(&c, commands))?;
                println!("broker user {}: the hub's identity is set", m.username);
                Ok(())
            })(),
            78,
        ),
        Command::User(UserCommand::Add { config, role, password_file, username }) => exit(
            (|| {
                let role = crate::api::Role::parse(&role)
                    .ok_or_else(|| format!("--role {role:?}: viewer, analyst or admin"))?;
                let mut text = String::new();
                match &password_file {
                    Some(p) => {
                        text = std::fs::read_to_string(p)
                            .map_err(|e| format!("{}: {e}", p.display()))?
                    }
                    None => {
                        std::io::stdin()
                            .read_line(&mut text)
                            .map_err(|e| format!("cannot read the password: {e}"))?;
                    }
                }
                let password = text.lines().next().unwrap_or_default().to_string();
                let c = Config::load(&config)?;
                runtime()?.block_on(async {
                    let client = prepare(&c).await?;
                    let id = crate::api::auth::add_user(&client, &username, &password, role)
                        .await
                        .map_err(|e| e.detail)?;
                    crate::api::auth::audit(
                        &client,
                        None,
                        "command line",
                        None,
                        "user_create",
                        &format!("user/{id}"),
                        serde_json::json!({"username": username, "role": role}),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    println!("{username}: added as {}", role.name());
                    Ok(())
                })
            })(),
            78,
        ),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file }) => {
            exit(Config::load(&file).map(|_| println!("{}: ok", file.display())), 78)
        }
        Command::FleetKey { config } => exit(
            Config::load(&config).and_then(|c| match c.fleet.signing_key()? {
                Some(key) => {
                    println!("{}", edge_config::fleet::public_key_text(&key));
                    Ok(())
                }
                None => Err(format!("{}: fleet.signing_key_file is not set", config.display())),
            }),
            78,
        ),
        Command::Schema { stream } => {
            match firmware::proto::json_schemas().into_iter().find(|(name, _)| *name == stream) {
                Some((_, schema)) => {
                    println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                None => {
                    let names: Vec<&str> =
                        firmware::proto::Stream::ALL.iter().map(|s| s.name()).collect();
                    eprintln!("tapwatch-hub: no stream {stream:?}; streams: {}", names.join(", "));
                    ExitCode::from(64)
                }
            }
        }
        Command::Check { topic, file } => {
            let mut payload = Vec::new();
            let read = match file.as_deref() {
                None => std::io::stdin().read_to_end(&mut payload).map(|_| ()),
                Some(p) if p.as_os_str() == "-" => {
                    std::io::stdin().read_to_end(&mut payload).map(|_| ())
                }
                Some(p) => std::fs::read(p).map(|b| payload = b),
            };
            if let Err(e) = read {
                eprintln!("tapwatch-hub: cannot read the payload: {e}");
                return ExitCode::from(66);
            }
            match decode(&topic, &payload, crate::ingest::now_us()) {
                Ok(m) => {
                    let h = m.header();
                    println!(
                        "accepted: {} message from {} seq {} ts {}",
                        m.stream().name(),
                        h.device,
                        h.seq,
                        h.ts
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rejected ({}): {e}", e.reason());
                    ExitCode::from(65)
                }
            }
        }
    }
}
