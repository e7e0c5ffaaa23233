//! The command line: one function per subcommand. `latchkey` alone serves.

mod keys;
mod user;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use self::keys::list_keys;
use crate::{
    auth::keys::{DEFAULT_BITS, KeyKind},
    config::Settings,
    db::{Database, entities::user::Role},
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
    /// Manage the second factor's encryption key.
    Mfa {
        #[command(subcommand)]
        command: MfaCommand,
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
        #[arg(long, default_value_t = DEFAULT_BITS)]
        bits: usize,
        /// Replace existing key files (tokens signed by the old keys stop verifying).
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Do nothing when the directory already has its keys (a container's first start).
        #[arg(long)]
        if_missing: bool,
    },
    /// Add a new key pair of one kind: published in the JWKS at once, signing only after
    /// `--delay` seconds. The key it replaces keeps verifying until its tokens have expired.
    Rotate {
        #[arg(long, value_enum)]
        kind: KindArg,
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_BITS)]
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

impl From<KindArg> for KeyKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Access => KeyKind::Access,
            KindArg::Refresh => KeyKind::Refresh,
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
        /// Mark the address as verified (you know it is the user's).
        #[arg(long)]
        verified: bool,
    },
    /// Change the role of an existing account.
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Remove the account's second factor (a lost device); every session of the user ends.
    ResetMfa {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Re-seal every TOTP secret with the current MFA_ENCRYPTION_KEY, after a key rotation
    /// (start the service with the new key in MFA_ENCRYPTION_KEY and the old one in
    /// MFA_ENCRYPTION_KEY_PREVIOUS, run this, then remove the old key).
    Reseal,
}

/// Runs a parsed command. Settings are loaded only by the commands that need them.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Keys { command } => match command {
            KeysCommand::Generate {
                dir,
                bits,
                force,
                if_missing,
            } => keys::generate(dir, bits, force, if_missing).await,
            KeysCommand::Rotate {
                kind,
                dir,
                bits,
                delay,
            } => keys::rotate(kind.into(), dir, bits, delay).await,
            KeysCommand::List { dir } => keys::list(&dir),
            KeysCommand::Prune { dir } => keys::prune(&dir),
        },
        Command::Migrate => migrate().await,
        Command::User { command } => match command {
            UserCommand::Create {
                email,
                name,
                role,
                verified,
            } => user::create(email, name, role.into(), verified).await,
            UserCommand::SetRole { email, role } => user::set_role(&email, role.into()).await,
            UserCommand::ResetMfa { email } => user::reset_mfa(&email).await,
        },
        Command::Mfa {
            command: MfaCommand::Reseal,
        } => user::reseal_mfa().await,
        Command::Openapi { yaml } => {
            if yaml {
                print!("{}", crate::api::spec_yaml());
            } else {
                println!("{}", crate::api::spec_json());
            }
            Ok(())
        }
    }
}

/// `latchkey serve`.
async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    crate::telemetry::init(settings.log_format);
    tracing::debug!(settings = ?settings, "starting");
    let app = Application::build(settings).await?;
    if app.state().settings.is_production() {
        tracing::info!(addr = %app.local_addr(), "latchkey listening");
    } else {
        println!("{}", app.banner());
    }
    app.run().await?;
    Ok(())
}

/// `latchkey migrate`.
async fn migrate() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let db = Database::connect(settings.database.url.expose(), settings.database.pool_size).await?;
    db.migrate().await?;
    println!("migrations applied");
    Ok(())
}
