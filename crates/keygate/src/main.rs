//! The `keygate` binary: the server, the admin commands that work on the data directory,
//! and a CLI client for a running server.

mod client;
mod config;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{Effective, FileConfig, LogFormat, Overrides};
use keygate_server::mint::{self, KeySpec};
use keygate_server::{Server, bootstrap, clock};
use keygate_store::{AuditEntry, SqliteStore, Store};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "Issue, verify, rate-limit and meter API credentials."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "KEYGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl ConfigArgs {
    fn resolve(&self) -> Result<Effective> {
        let file = match &self.config {
            Some(path) => config::read_file(path).map_err(anyhow::Error::msg)?,
            None => FileConfig::default(),
        };
        config::resolve(&file, &self.overrides)
            .map_err(|errors| anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  ")))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ConfigArgs),
    /// Run the store's migrations and exit.
    Migrate(ConfigArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work directly on the data directory (the server may be running).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage keys through a running server's API.
    #[command(subcommand)]
    Keys(client::KeysCommand),
    /// Read the audit log through a running server's API.
    #[command(subcommand)]
    Audit(client::AuditCommand),
    /// Tools for receivers of keygate's webhooks.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Print the OpenAPI 3.1 document of this configuration's API (for client generators).
    Openapi(ConfigArgs),
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Verify a Standard Webhooks signature; exits 0 when it is good, 1 with the reason.
    Verify {
        /// The endpoint's signing secret (whsec_…).
        #[arg(long, env = "KEYGATE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The webhook-id header.
        #[arg(long)]
        id: Option<String>,
        /// The webhook-timestamp header (Unix seconds).
        #[arg(long)]
        timestamp: Option<String>,
        /// The webhook-signature header (`v1,…`, several space-separated).
        #[arg(long)]
        signature: Option<String>,
        /// A file of `Name: value` lines holding the three headers, instead of the flags.
        #[arg(long, value_name = "FILE")]
        headers: Option<PathBuf>,
        /// The raw request body (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// Seconds a timestamp may be from now.
        #[arg(long, default_value_t = keygate_core::webhook::DEFAULT_TOLERANCE_SECS)]
        tolerance: i64,
        /// Verify as of this Unix time instead of now (for replaying a saved delivery).
        #[arg(long, hide = true)]
        at: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration; exit non-zero on an unknown key or bad value.
    Check(ConfigArgs),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a key and print it alone on stdout. A running server accepts it within a second.
    CreateKey {
        /// The server's configuration file: its `data_dir` and `key_prefix` apply (a
        /// preset's `ctf_sk` keys, say) unless the flags below say otherwise.
        #[arg(long, env = "KEYGATE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Directory of the embedded SQLite store (default: the configuration's, else
        /// ./keygate-data).
        #[arg(long, env = "KEYGATE_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        name: String,
        /// Comma-separated scopes (e.g. admin or files:read,files:write).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Key prefix (default: the configuration's `key_prefix`, else kg).
        #[arg(long)]
        prefix: Option<String>,
        /// RFC 3339 expiry time.
        #[arg(long, value_parser = parse_rfc3339)]
        expires_at: Option<time::OffsetDateTime>,
    },
    /// Give a user a new password (printed once) and end their sign-ins. For a locked-out
    /// instance; works with the server running or stopped.
    ResetPassword {
        #[arg(
            long,
            env = "KEYGATE_DATA_DIR",
            default_value = "./keygate-data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
        /// The username.
        user: String,
        /// Read the new password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn parse_rfc3339(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{text:?} is not an RFC 3339 time like 2030-01-31T12:00:00Z"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(data_dir: &std::path::Path) -> Result<SqliteStore> {
    SqliteStore::open(data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))
}

/// Registers the shutdown signals at once and answers a future that completes on the
/// first of them. Registering early matters: until a handler exists, SIGTERM's default
/// action kills the process, so a stop sent just after start would skip the graceful
/// shutdown (and lose the usage counted so far).
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    })
}

async fn serve(args: ConfigArgs) -> Result<()> {
    let effective = args.resolve()?;
    init_logging(effective.log_format);
    let shutdown = shutdown_signal()?;
    let config = effective.server_config();
    // Read before anything is created, so a bad value stops a first start cleanly.
    let admin_password = std::env::var("KEYGATE_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(given) = &admin_password {
        keygate_server::passwords::validate_password(given)
            .map_err(|m| anyhow::anyhow!("KEYGATE_ADMIN_PASSWORD {m}"))?;
    }
    let listener = tokio::net::TcpListener::bind(effective.listen)
        .await
        .with_context(|| format!("cannot listen on {}", effective.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let store = Arc::new(open_store(&effective.data_dir).await?);
    if let Some(key) =
        bootstrap::ensure_global_key(store.as_ref(), clock::now_ms(), &config.key_prefix).await?
    {
        print_global_key_banner(&key, &url);
    }
    let passwords = keygate_server::passwords::Passwords::new(config.password_cost)
        .map_err(anyhow::Error::msg)?;
    if let Some(password) =
        bootstrap::ensure_admin_user(store.as_ref(), &passwords, admin_password).await?
    {
        print_admin_password_banner(&password, &url);
    }
    bootstrap::apply_declared(store.as_ref(), &effective.declared(), clock::now_ms()).await?;
    let server = Server::load(config, Arc::clone(&store) as Arc<dyn Store>).await?;
    println!(
        "keygate listening on {url} (data in {})",
        effective.data_dir.display()
    );
    server.serve(listener, shutdown).await?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn print_global_key_banner(key: &str, url: &str) {
    println!(
        "\n================================================================\n\
         keygate: first start. The instance's global admin key is:\n\n    {key}\n\n\
         Keep it safe. Administrators can show it again or regenerate it\n\
         (/api/v1/settings/api-key). Try it:\n    curl -H \"Authorization: Bearer {key}\" {url}/api/v1/whoami\n\
         Or:\n    export KEYGATE_URL={url} KEYGATE_API_KEY={key}\n    keygate keys list\n\
         ================================================================\n"
    );
}

fn print_admin_password_banner(password: &str, url: &str) {
    println!(
        "keygate: created the user `admin` with the password\n\n    {password}\n\n\
         It is shown this once (set KEYGATE_ADMIN_PASSWORD before the first start to choose it).\n\
         Sign in:\n    curl -X POST -H 'Content-Type: application/json' \\\n      \
         -d '{{\"username\":\"admin\",\"password\":\"<password>\"}}' {url}/api/v1/auth/token\n\
         Forgot it? keygate admin reset-password admin\n"
    );
}

async fn admin_create_key(
    data_dir: PathBuf,
    name: String,
    scopes: Vec<String>,
    prefix: String,
    expires_at: Option<time::OffsetDateTime>,
) -> Result<()> {
    let store = open_store(&data_dir).await?;
    let spec = KeySpec {
        name,
        scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
        prefix: Some(prefix),
        expires_at: expires_at.map(clock::millis_of),
        enabled: true,
        ..Default::default()
    };
    let (key, record) = mint::mint(&spec, clock::now_ms())?;
    let entry = AuditEntry {
        at: record.created_at,
        actor: "cli".into(),
        action: "key.create".into(),
        target: Some(format!("key:{}", record.id)),
        events: vec![keygate_store::OutboxEvent::for_key(
            "key.created",
            &record,
            record.created_at,
        )],
        ..Default::default()
    };
    store.insert_key(&record, None, &entry).await?;
    store.close().await;
    println!("{key}");
    eprintln!(
        "created key {} ({}); it will not be shown again",
        record.id, record.start
    );
    Ok(())
}

async fn reset_password(data_dir: PathBuf, username: String, from_stdin: bool) -> Result<()> {
    use keygate_server::passwords;
    let store = open_store(&data_dir).await?;
    let Some((user, _)) = store.user_for_login(&username).await? else {
        anyhow::bail!("no user named {username:?} in {}", data_dir.display());
    };
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        passwords::validate_password(&line).map_err(|m| anyhow::anyhow!("the password {m}"))?;
        line
    } else {
        passwords::generate_password()
            .map_err(|e| anyhow::anyhow!("random number generator: {e}"))?
    };
    // The cost of new hashes follows the configuration defaults; verification reads the
    // parameters from each hash.
    let hasher = passwords::Passwords::new(passwords::PasswordCost::default())
        .map_err(anyhow::Error::msg)?;
    let hash = hasher.hash(&password)?;
    let entry = AuditEntry {
        at: clock::now_ms(),
        actor: "cli".into(),
        action: "user.password_reset".into(),
        target: Some(format!("user:{}", user.id)),
        ..Default::default()
    };
    store.set_password(user.id, &hash, &entry).await?;
    store.close().await;
    if !from_stdin {
        println!("{password}");
    }
    eprintln!(
        "password of {} reset; their sign-ins are ended",
        user.username
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)] // One argument per command-line flag.
fn verify_webhook(
    secret: &str,
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    headers: Option<PathBuf>,
    body: &std::path::Path,
    tolerance: i64,
    at: Option<i64>,
) -> Result<()> {
    use std::io::Read;
    let (mut id, mut timestamp, mut signature) = (id, timestamp, signature);
    if let Some(path) = headers {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = Some(value.trim().to_string());
            match name.trim().to_ascii_lowercase().as_str() {
                "webhook-id" => id = id.or(value),
                "webhook-timestamp" => timestamp = timestamp.or(value),
                "webhook-signature" => signature = signature.or(value),
                _ => {}
            }
        }
    }
    let missing = |what: &str| {
        anyhow::anyhow!("no {what}: pass --{what} or a --headers file with webhook-{what}")
    };
    let id = id.ok_or_else(|| missing("id"))?;
    let timestamp = timestamp.ok_or_else(|| missing("timestamp"))?;
    let signature = signature.ok_or_else(|| missing("signature"))?;
    let mut bytes = Vec::new();
    if body == std::path::Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(body).with_context(|| format!("cannot read {}", body.display()))?;
    }
    let now = at.unwrap_or_else(|| clock::now_ms() / 1000);
    keygate_core::webhook::verify(secret, &id, &timestamp, &bytes, &signature, now, tolerance)
        .map_err(|reason| anyhow::anyhow!("signature not valid: {reason}"))?;
    println!("valid");
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => {
            let effective = args.resolve()?;
            let store = open_store(&effective.data_dir).await?;
            store.close().await;
            println!("migrations applied to {}", store.path().display());
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let effective = args.resolve()?;
            // No setting is secret yet; any added later must be redacted here.
            print!("{}", toml::to_string(&effective)?);
            Ok(())
        }
        Command::Admin(AdminCommand::CreateKey {
            config,
            data_dir,
            name,
            scopes,
            prefix,
            expires_at,
        }) => {
            // Only what a key needs from the server's file (flags and environment first):
            // the rest of it is the server's to check.
            let file = match &config {
                Some(path) => config::read_file(path).map_err(anyhow::Error::msg)?,
                None => FileConfig::default(),
            };
            let data_dir = data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./keygate-data"));
            let prefix = prefix.or(file.key_prefix).unwrap_or_else(|| "kg".into());
            admin_create_key(data_dir, name, scopes, prefix, expires_at).await
        }
        Command::Keys(command) => client::run(command).await,
        Command::Webhooks(WebhooksCommand::Verify {
            secret,
            id,
            timestamp,
            signature,
            headers,
            body,
            tolerance,
            at,
        }) => verify_webhook(
            &secret, id, timestamp, signature, headers, &body, tolerance, at,
        ),
        Command::Audit(command) => client::run_audit(command).await,
        Command::Admin(AdminCommand::ResetPassword {
            data_dir,
            user,
            password_stdin,
        }) => reset_password(data_dir, user, password_stdin).await,
        Command::Openapi(args) => {
            let effective = args.resolve()?;
            let doc = keygate_server::http::docs::openapi(&effective.server_config());
            println!("{}", doc.to_pretty_json()?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
