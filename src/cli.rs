//! The command line. `latchkey` alone serves.

use std::{io::Read, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use crate::{
    api::validate::Validator,
    auth::{keys, password::PasswordService},
    config::{KeyPaths, Settings},
    db::{self, entities::user::Role},
    startup::Application,
};

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Self-hosted authentication: RS256 JWTs with revocable sessions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Manage RSA key pairs.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the OpenAPI spec.
    Openapi {
        /// Print YAML instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate the access and the refresh key pair (private keys are written with mode 0600).
    Generate {
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        #[arg(long, default_value_t = keys::DEFAULT_BITS)]
        bits: usize,
        /// Replace existing key files (tokens signed by the old keys stop verifying).
        #[arg(long)]
        force: bool,
    },
    /// Add a new key pair of one kind: published in the JWKS at once, signing only after
    /// `--delay` seconds. The key it replaces keeps verifying until its tokens have expired.
    Rotate {
        #[arg(long, value_enum)]
        kind: KindArg,
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        #[arg(long, default_value_t = keys::DEFAULT_BITS)]
        bits: usize,
        /// Seconds before the new key signs. Default: JWKS_MAX_AGE + 60, so every verifier's
        /// cached JWKS holds the new key before any token signed with it exists.
        #[arg(long)]
        delay: Option<u64>,
    },
    /// Show every key with its state (pending, signing, retiring, expired) and times.
    List {
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
    },
    /// Delete the keys whose tokens have all expired (state `expired`).
    Prune {
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
    },
}

/// Which kind of key to rotate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Access,
    Refresh,
}

impl From<KindArg> for keys::KeyKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Access => keys::KeyKind::Access,
            KindArg::Refresh => keys::KeyKind::Refresh,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    User,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::User => Role::User,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from standard input. This is how the first admin
    /// is made: `echo "$PASSWORD" | latchkey user create --email a@b.c --name Ada --role admin`.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
    },
    /// Change the role of an existing account.
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

/// Runs a parsed command. Settings are loaded only by the commands that need them.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = Settings::from_env()?;
            crate::telemetry::init(settings.log_format);
            tracing::info!(settings = ?settings, "starting");
            Application::build(settings).await?.run().await?;
        }
        Command::Keys {
            command: KeysCommand::Generate { dir, bits, force },
        } => {
            let paths =
                tokio::task::spawn_blocking(move || keys::generate_key_dir(&dir, bits, force))
                    .await?
                    .map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} (0600), {}, {} (0600), {}",
                paths.access_private.display(),
                paths.access_public.display(),
                paths.refresh_private.display(),
                paths.refresh_public.display()
            );
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    kind,
                    dir,
                    bits,
                    delay,
                },
        } => {
            // Lifetimes, leeway and the JWKS max-age come from the service's own settings:
            // run this with the same environment (or app.env) as the service.
            let settings = Settings::from_env()?;
            let kind = keys::KeyKind::from(kind);
            let policy = keys::RotationPolicy {
                delay_secs: i64::try_from(
                    delay.unwrap_or(settings.jwks_max_age_secs.saturating_add(60)),
                )
                .map_err(|_| anyhow::anyhow!("--delay is too large"))?,
                token_ttl_secs: match kind {
                    keys::KeyKind::Access => settings.access_ttl_secs,
                    keys::KeyKind::Refresh => settings.refresh_ttl_secs,
                },
                leeway_secs: i64::try_from(settings.leeway_secs)
                    .map_err(|_| anyhow::anyhow!("JWT_LEEWAY is too large"))?,
            };
            let paths = KeyPaths::in_dir(&dir);
            let entry = tokio::task::spawn_blocking(move || {
                let pair = keys::generate_pair(bits)?;
                keys::rotate(&paths, kind, &pair, &policy, chrono::Utc::now())
            })
            .await?
            .map_err(anyhow::Error::msg)?;
            // Only access keys are published; refresh keys are verified by Latchkey alone.
            let visibility = match kind {
                keys::KeyKind::Access => "published in the JWKS now",
                keys::KeyKind::Refresh => "loaded by every instance within KEYS_RELOAD_SECS",
            };
            println!(
                "added {} key {} ({}, 0600): {visibility}, signs from {}",
                kind.as_str(),
                entry.kid,
                dir.join(&entry.private_key).display(),
                entry.signs_from.to_rfc3339()
            );
        }
        Command::Keys {
            command: KeysCommand::List { dir },
        } => {
            let manifest = keys::Manifest::read_or_describe(&KeyPaths::in_dir(&dir))
                .map_err(anyhow::Error::msg)?;
            print!("{}", list_keys(&manifest, chrono::Utc::now()));
        }
        Command::Keys {
            command: KeysCommand::Prune { dir },
        } => {
            let removed = keys::prune(&KeyPaths::in_dir(&dir), chrono::Utc::now())
                .map_err(anyhow::Error::msg)?;
            if removed.is_empty() {
                println!("nothing to prune");
            }
            for entry in removed {
                println!(
                    "removed {} key {} ({}, {})",
                    entry.kind.as_str(),
                    entry.kid,
                    entry.private_key,
                    entry.public_key
                );
            }
        }
        Command::Migrate => {
            let settings = Settings::from_env()?;
            let db = db::connect(
                settings.database_url.expose_secret(),
                settings.database_pool_size,
            )
            .await?;
            db::migrate(&db).await?;
            println!("migrations applied");
        }
        Command::User {
            command: UserCommand::Create { email, name, role },
        } => {
            let settings = Settings::from_env()?;
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password)?;
            let password = password
                .strip_suffix('\n')
                .map(|p| p.strip_suffix('\r').unwrap_or(p))
                .unwrap_or(&password)
                .to_owned();
            let mut v = Validator::new();
            let name = v.name("name", Some(name));
            let email = v.email("email", Some(email));
            let password = v.new_password("password (stdin)", Some(password));
            let ((name, email), password) = v
                .finish(name.zip(email).zip(password))
                .map_err(|err| anyhow::anyhow!("{}: {:?}", err.message, err.details))?;
            let db = db::connect(
                settings.database_url.expose_secret(),
                settings.database_pool_size,
            )
            .await?;
            db::migrate(&db).await?;
            let hasher = PasswordService::new(
                settings.argon2,
                1,
                std::time::Duration::from_secs(60),
                std::sync::Arc::new(crate::telemetry::metrics::Metrics::new()),
            )?;
            let password_hash = hasher.hash(password.into()).await?;
            let user = db::users::insert(
                &db,
                db::users::NewUser {
                    name,
                    email,
                    password_hash,
                    role: role.into(),
                },
            )
            .await
            .map_err(|err| {
                if db::users::is_unique_violation(&err) {
                    anyhow::anyhow!("an account with this email already exists")
                } else {
                    err.into()
                }
            })?;
            println!(
                "created {} {} ({})",
                user.id,
                user.email,
                user.role.as_str()
            );
        }
        Command::User {
            command: UserCommand::SetRole { email, role },
        } => {
            let settings = Settings::from_env()?;
            let db = db::connect(
                settings.database_url.expose_secret(),
                settings.database_pool_size,
            )
            .await?;
            db::migrate(&db).await?;
            let email = crate::api::validate::normalize_email(&email);
            match db::users::set_role(&db, &email, role.into()).await? {
                Some(user) => println!("{} is now {}", user.email, user.role.as_str()),
                None => anyhow::bail!("no account with email {email}"),
            }
        }
        Command::Openapi { yaml } => {
            if yaml {
                print!("{}", crate::api::spec_yaml());
            } else {
                println!("{}", crate::api::spec_json());
            }
        }
    }
    Ok(())
}

/// The table `latchkey keys list` prints: one line per key.
pub fn list_keys(manifest: &keys::Manifest, now: chrono::DateTime<chrono::Utc>) -> String {
    let time = |t: chrono::DateTime<chrono::Utc>| {
        if t == chrono::DateTime::UNIX_EPOCH {
            "-".to_owned()
        } else {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        }
    };
    let mut out = format!(
        "{:<8} {:<44} {:<9} {:<20} {:<20} {:<20}\n",
        "KIND", "KID", "STATE", "CREATED", "SIGNS FROM", "RETIRES AT"
    );
    for (i, entry) in manifest.keys.iter().enumerate() {
        out.push_str(&format!(
            "{:<8} {:<44} {:<9} {:<20} {:<20} {:<20}\n",
            entry.kind.as_str(),
            entry.kid,
            manifest.state(i, now).as_str(),
            time(entry.created_at),
            time(entry.signs_from),
            entry.retires_at.map_or_else(|| "-".to_owned(), time),
        ));
    }
    out
}
