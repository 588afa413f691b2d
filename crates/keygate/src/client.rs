//! `keygate keys ...`: a client of a running server's management API.

use anyhow::{Context, Result, anyhow, bail};
use keygate_api::ErrorBody;
use keygate_api::keys::{
    CreateKeyRequest, CreatedKey, KeyList, KeyView, RotateKeyRequest, RotatedKey,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the keygate server.
    #[arg(
        long,
        env = "KEYGATE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key with the admin scope.
    #[arg(long, env = "KEYGATE_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// RFC 3339 expiry time.
        #[arg(long, value_parser = super::parse_rfc3339)]
        expires_at: Option<time::OffsetDateTime>,
    },
    /// List keys, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only keys in this state (active, disabled, expired, revoked).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one key.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Revoke a key: the next request with it is refused.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Replace a key with a new one; the old one works for the grace period.
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print the newest audit entries; with --follow, keep printing new ones.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// How many recent entries to print first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this action or family of actions (e.g. key, auth.login_failed).
        #[arg(long)]
        action: Option<String>,
        /// Keep polling for new entries.
        #[arg(long, short)]
        follow: bool,
    },
}

fn print_audit(entry: &keygate_api::accounts::AuditView) {
    let at = entry
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "{:>6}  {at}  {:<22}  {:<44}  {}  {}",
        entry.seq,
        entry.action,
        entry.actor,
        entry.target.as_deref().unwrap_or("-"),
        entry.ip.as_deref().unwrap_or("-")
    );
}

pub async fn run_audit(command: AuditCommand) -> Result<()> {
    let AuditCommand::Tail {
        client,
        limit,
        action,
        follow,
    } = command;
    let api = Client::new(&client)?;
    let filter = action
        .map(|a| format!("&action={}", form_urlencoded_value(&a)))
        .unwrap_or_default();
    let list: keygate_api::accounts::AuditList = api
        .call(
            Method::GET,
            &format!("/api/v1/audit?limit={limit}{filter}"),
            None::<&()>,
        )
        .await?;
    let mut last = list.entries.first().map(|e| e.seq).unwrap_or(0);
    for entry in list.entries.iter().rev() {
        if client.json {
            println!("{}", serde_json::to_string(entry)?);
        } else {
            print_audit(entry);
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        // Polling once a second is plenty for a human watching the log.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let newer: keygate_api::accounts::AuditList = api
            .call(
                Method::GET,
                &format!("/api/v1/audit?after={last}&limit=1000{filter}"),
                None::<&()>,
            )
            .await?;
        for entry in &newer.entries {
            last = last.max(entry.seq);
            if client.json {
                println!("{}", serde_json::to_string(entry)?);
            } else {
                print_audit(entry);
            }
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self> {
        let api_key = args
            .api_key
            .clone()
            .ok_or_else(|| anyhow!("no API key: pass --api-key or set KEYGATE_API_KEY"))?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            base: args.url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.api_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach keygate at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).context("unexpected answer from the server");
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => {
                let mut message = format!(
                    "{} ({}): {}",
                    status.as_u16(),
                    body.error.code.as_str(),
                    body.error.message
                );
                if let Some(hint) = body.error.hint {
                    message.push_str(&format!("\n  hint: {hint}"));
                }
                bail!(message)
            }
            Err(_) if status == StatusCode::NOT_FOUND => {
                bail!("404: is {} a keygate server?", self.base)
            }
            Err(_) => bail!("the server answered {status}"),
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_key(view: &KeyView) {
    let fmt = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("id:         {}", view.id);
    println!("name:       {}", view.name);
    println!("start:      {}…", view.start);
    println!("state:      {}", view.state);
    println!(
        "scopes:     {}",
        if view.scopes.is_empty() {
            "-".into()
        } else {
            view.scopes.join(",")
        }
    );
    println!("expires:    {}", fmt(view.expires_at));
    println!("last used:  {}", fmt(view.last_used_at));
    println!("uses:       {}", view.usage_count);
    if let Some(next) = view.rotated_to {
        println!("rotated to: {next}");
    }
}

fn check_id(id: &str) -> Result<&str> {
    uuid::Uuid::parse_str(id).map_err(|_| anyhow!("{id:?} is not a key id (a UUID)"))?;
    Ok(id)
}

pub async fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create {
            client,
            name,
            scopes,
            prefix,
            expires_at,
        } => {
            let api = Client::new(&client)?;
            let body = CreateKeyRequest {
                name,
                scopes: Some(scopes.into_iter().filter(|s| !s.is_empty()).collect()),
                prefix,
                expires_at,
                ..Default::default()
            };
            let created: CreatedKey = api.call(Method::POST, "/api/v1/keys", Some(&body)).await?;
            if client.json {
                return print_json(&created);
            }
            print_key(&created.record);
            println!("\nkey:        {}", created.key);
            eprintln!("\nStore the key now: it will not be shown again.");
        }
        KeysCommand::List {
            client,
            state,
            limit,
        } => {
            let api = Client::new(&client)?;
            let mut path = format!("/api/v1/keys?limit={limit}");
            if let Some(state) = state {
                path.push_str(&format!("&state={}", form_urlencoded_value(&state)));
            }
            let list: KeyList = api.call(Method::GET, &path, None::<&()>).await?;
            if client.json {
                return print_json(&list);
            }
            println!("{:<36}  {:<12}  {:<9}  NAME", "ID", "START", "STATE");
            for key in &list.keys {
                println!(
                    "{:<36}  {:<12}  {:<9}  {}",
                    key.id, key.start, key.state, key.name
                );
            }
        }
        KeysCommand::Show { client, id } => {
            let api = Client::new(&client)?;
            let path = format!("/api/v1/keys/{}", check_id(&id)?);
            let view: KeyView = api.call(Method::GET, &path, None::<&()>).await?;
            if client.json {
                return print_json(&view);
            }
            print_key(&view);
        }
        KeysCommand::Revoke { client, id } => {
            let api = Client::new(&client)?;
            let path = format!("/api/v1/keys/{}", check_id(&id)?);
            let view: KeyView = api.call(Method::DELETE, &path, None::<&()>).await?;
            if client.json {
                return print_json(&view);
            }
            println!("revoked {} ({})", view.id, view.name);
        }
        KeysCommand::Rotate {
            client,
            id,
            grace_seconds,
        } => {
            let api = Client::new(&client)?;
            let path = format!("/api/v1/keys/{}/rotate", check_id(&id)?);
            let rotated: RotatedKey = api
                .call(
                    Method::POST,
                    &path,
                    Some(&RotateKeyRequest { grace_seconds }),
                )
                .await?;
            if client.json {
                return print_json(&rotated);
            }
            print_key(&rotated.key.record);
            println!("\nkey:        {}", rotated.key.key);
            eprintln!(
                "\nStore the key now: it will not be shown again. The old key {} works for {grace_seconds} s more.",
                rotated.previous.id
            );
        }
    }
    Ok(())
}

fn form_urlencoded_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
