//! `latchkey user ...`: accounts made and changed from the command line, through the same
//! flows as the API (and audited with the command line as the actor).

use std::io::Read;

use crate::{
    accounts::NewAccount,
    client::ClientInfo,
    config::Settings,
    db::entities::user::Role,
    startup::{self, Purpose},
};

/// `user create`: the password comes from standard input (one line).
/// `verified`: the address is known to be the user's (no verification mail is needed).
pub async fn create(email: String, name: String, role: Role, verified: bool) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password)?;
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password)
        .to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input: pipe it in, e.g. \
         printf '%s\\n' \"$PASSWORD\" | latchkey user create --email ... --name ..."
    );
    let services = startup::services(Settings::from_env()?, Purpose::Command).await?;
    let account = NewAccount {
        name,
        email,
        password,
        role,
        verified,
    };
    let user = services
        .accounts
        .create_account(account, &ClientInfo::local())
        .await?;
    let verified = if user.email_verified_at.is_some() {
        ", address verified"
    } else {
        ""
    };
    println!(
        "created {} {} ({}{verified})",
        user.id,
        user.email,
        user.role.as_str()
    );
    Ok(())
}

/// `user set-role`.
pub async fn set_role(email: &str, role: Role) -> anyhow::Result<()> {
    let services = startup::services(Settings::from_env()?, Purpose::Command).await?;
    let user = services
        .accounts
        .set_role(email, role, &ClientInfo::local())
        .await?;
    println!("{} is now {}", user.email, user.role.as_str());
    Ok(())
}

/// `user reset-mfa`: removes the user's second factor (a lost device) and ends their sessions.
pub async fn reset_mfa(email: &str) -> anyhow::Result<()> {
    let services = startup::services(Settings::from_env()?, Purpose::Command).await?;
    let accounts = &services.accounts;
    let user = accounts.user_by_email(email).await?;
    let cli = serde_json::json!("cli");
    accounts
        .reset_mfa(user.id, cli, &ClientInfo::local())
        .await?;
    println!("{}: second factor removed, every session ended", user.email);
    Ok(())
}

/// `mfa reseal`: after `MFA_ENCRYPTION_KEY` changed (the old key in
/// `MFA_ENCRYPTION_KEY_PREVIOUS`), seals every TOTP secret under the new key.
pub async fn reseal_mfa() -> anyhow::Result<()> {
    let services = startup::services(Settings::from_env()?, Purpose::Command).await?;
    let resealed = services.accounts.reseal_mfa_secrets().await?;
    println!(
        "{resealed} TOTP secret(s) re-sealed with the current MFA_ENCRYPTION_KEY; \
         MFA_ENCRYPTION_KEY_PREVIOUS can now be removed"
    );
    Ok(())
}
