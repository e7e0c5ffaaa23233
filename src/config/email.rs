//! The email settings (API.md section 8): the flows' policy, SMTP, and the delivery worker's
//! retries. Read here and checked here, so the whole concern is in one place.

use super::{ConfigError, MailSettings, SecretUrl, Settings, vars::Vars};
use crate::{
    accounts::{EmailPolicy, Verification},
    mail::{DeliverySettings, Mailer},
};

pub(super) fn policy(vars: &Vars<'_>) -> Result<EmailPolicy, ConfigError> {
    let default = EmailPolicy::default();
    Ok(EmailPolicy {
        enabled: vars.flag("EMAIL_FLOWS")?.unwrap_or(true),
        verification: match vars.get("EMAIL_VERIFICATION").as_deref() {
            None | Some("optional") => Verification::Optional,
            Some("off") => Verification::Off,
            Some("required") => Verification::Required,
            Some(other) => {
                let expected = "off, optional or required";
                return Err(ConfigError::invalid("EMAIL_VERIFICATION", other, expected));
            }
        },
        verify_ttl: vars.secs("EMAIL_VERIFY_TTL", default.verify_ttl.as_secs())?,
        reset_ttl: vars.secs("PASSWORD_RESET_TTL", default.reset_ttl.as_secs())?,
        change_ttl: vars.secs("EMAIL_CHANGE_TTL", default.change_ttl.as_secs())?,
        // Empty without either: `{public URL}/account` once the URL is known.
        link_base: vars
            .get("EMAIL_LINK_BASE")
            .map(|base| base.trim_end_matches('/').to_owned())
            .or_else(|| {
                let public = vars.get("PUBLIC_URL")?;
                Some(format!("{}/account", public.trim_end_matches('/')))
            })
            .unwrap_or_default(),
    })
}

pub(super) fn mail(vars: &Vars<'_>) -> Result<MailSettings, ConfigError> {
    let default = DeliverySettings::default();
    Ok(MailSettings {
        smtp_url: vars.get("SMTP_URL").map(SecretUrl::from),
        outbox_dir: None,
        delivery: DeliverySettings {
            from: vars.get("MAIL_FROM").unwrap_or(default.from),
            max_attempts: vars.number("MAIL_MAX_ATTEMPTS", default.max_attempts)?,
            retry_base: vars.secs("MAIL_RETRY_BASE_SECS", default.retry_base.as_secs())?,
            ..default
        },
    })
}

/// The rules of every environment, then production's.
pub(super) fn check(settings: &Settings) -> Result<(), ConfigError> {
    let (policy, mail) = (&settings.accounts.email, &settings.mail);
    if policy.enabled {
        Mailer::check_from(&mail.delivery.from).map_err(|err| {
            ConfigError::refused("MAIL_FROM", &mail.delivery.from, err.to_string())
        })?;
    }
    if mail.delivery.max_attempts == 0 {
        return Err(ConfigError::refused(
            "MAIL_MAX_ATTEMPTS",
            0,
            "must be at least 1",
        ));
    }
    if !policy.enabled && policy.verification == Verification::Required {
        return Err(ConfigError::refused(
            "EMAIL_VERIFICATION",
            "required",
            "needs mail: remove EMAIL_FLOWS=off, or set EMAIL_VERIFICATION=off or optional",
        ));
    }
    if !policy.link_base.is_empty() && !super::rules::is_base_url(&policy.link_base) {
        return Err(ConfigError::refused(
            "EMAIL_LINK_BASE",
            &policy.link_base,
            "is not a base URL: write e.g. https://app.example.com/account",
        ));
    }
    if let Some(url) = &mail.smtp_url {
        Mailer::check_smtp_url(url.expose())
            .map_err(|err| ConfigError::refused("SMTP_URL", format!("{url:?}"), err.to_string()))?;
    }
    if settings.is_production() && policy.enabled {
        production(settings)?;
    }
    Ok(())
}

fn production(settings: &Settings) -> Result<(), ConfigError> {
    let mail = &settings.mail;
    let Some(url) = &mail.smtp_url else {
        return Err(ConfigError::Missing {
            var: "SMTP_URL",
            fix: "production sends verification and reset mails over SMTP, e.g. \
                  SMTP_URL=smtps://USER:PASSWORD@smtp.example.com:465 (or \
                  smtp://USER:PASSWORD@smtp.example.com:587?tls=required); set EMAIL_FLOWS=off \
                  to run without mail"
                .into(),
        });
    };
    if Mailer::is_plain_to_remote(url.expose()) {
        return Err(ConfigError::refused(
            "SMTP_URL",
            format!("{url:?}"),
            "sends mail unencrypted to another host: use smtps://HOST:465, or \
             smtp://HOST:587?tls=required (plain smtp:// is for a relay on this machine)",
        ));
    }
    if mail.delivery.from == DeliverySettings::default().from {
        return Err(ConfigError::Missing {
            var: "MAIL_FROM",
            fix: "production mails need a sender your SMTP server accepts, e.g. \
                  MAIL_FROM='Example <no-reply@example.com>'"
                .into(),
        });
    }
    let base = &settings.accounts.email.link_base;
    if !base.is_empty() && !base.starts_with("https://") && !super::rules::is_loopback_http(base) {
        return Err(ConfigError::refused(
            "EMAIL_LINK_BASE",
            base,
            "must be https in production: the links carry one-time tokens",
        ));
    }
    Ok(())
}
