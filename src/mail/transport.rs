//! How a mail leaves: SMTP through lettre (plain, STARTTLS or implicit TLS, from `SMTP_URL`), or
//! an `.eml` file in the development outbox folder.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};

use crate::db::entities::mail_outbox;

/// Why a mailer cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP_URL is not usable: {0}")]
    SmtpUrl(String),
    #[error("MAIL_FROM {0:?} is not a mailbox: write e.g. 'Latchkey <no-reply@example.com>'")]
    From(String),
    #[error("creating the outbox folder {}: {source}", .path.display())]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one delivery failed.
#[derive(Debug, Clone)]
pub struct SendError {
    /// Retrying cannot help (the server refused the mail for good, or it cannot be built).
    pub permanent: bool,
    pub message: String,
}

impl SendError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// Sends mails from `MAIL_FROM`.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    description: String,
}

fn mailbox(from: &str) -> Result<Mailbox, MailError> {
    from.parse().map_err(|_| MailError::From(from.to_owned()))
}

impl Mailer {
    /// Whether `from` is a usable `MAIL_FROM`.
    pub fn check_from(from: &str) -> Result<(), MailError> {
        mailbox(from).map(|_| ())
    }

    /// Whether lettre takes `url`: `smtp://` (plain, or `?tls=required` for STARTTLS) or
    /// `smtps://`, with a host.
    pub fn check_smtp_url(url: &str) -> Result<(), MailError> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map(|_| ())
            .map_err(|err| MailError::SmtpUrl(err.to_string()))
    }

    /// Whether `url` would send mail unencrypted (or downgradable) to another machine.
    pub fn is_plain_to_remote(url: &str) -> bool {
        let Ok(url) = url::Url::parse(url) else {
            return false;
        };
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let plain = url.scheme() == "smtp" && tls.as_deref() != Some("required");
        // `smtp:` is not a special scheme to the URL parser: its IPv4 hosts come as domains.
        let loopback = match url.host() {
            Some(url::Host::Domain(host)) => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        plain && !loopback
    }

    /// An SMTP mailer for `url` (lettre's URL form). Connections are pooled and made on first
    /// use, so a mail server that is down at start only delays the first mails.
    pub fn smtp(url: &str, from: &str, timeout: Duration) -> Result<Self, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|err| MailError::SmtpUrl(err.to_string()))?
            .timeout(Some(timeout))
            .build();
        let description = match url::Url::parse(url) {
            Ok(u) => format!(
                "SMTP {}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or_default(),
                u.port().map_or_else(|| "default".into(), |p| p.to_string())
            ),
            Err(_) => "SMTP".into(),
        };
        Ok(Self {
            transport: Transport::Smtp(transport),
            from: mailbox(from)?,
            description,
        })
    }

    /// A mailer that writes each mail as `<id>.eml` into `dir` (created if missing).
    pub fn files(dir: &Path, from: &str) -> Result<Self, MailError> {
        std::fs::create_dir_all(dir).map_err(|source| MailError::Outbox {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            transport: Transport::Files(AsyncFileTransport::new(dir), dir.to_owned()),
            from: mailbox(from)?,
            description: format!("files in {}/", dir.display()),
        })
    }

    /// Where mail goes, for the startup banner.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Sends `mail`. For the outbox folder, returns the file written.
    pub async fn send(&self, mail: &mail_outbox::Model) -> Result<Option<PathBuf>, SendError> {
        let message = self.message(mail)?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message)
                    .await
                    .map(|_| None)
                    .map_err(|err| SendError {
                        permanent: err.is_permanent(),
                        message: format!("{err:#}"),
                    })
            }
            Transport::Files(files, dir) => files
                .send(message)
                .await
                .map(|id| Some(dir.join(format!("{id}.eml"))))
                .map_err(|err| SendError {
                    permanent: false,
                    message: err.to_string(),
                }),
        }
    }

    fn message(&self, mail: &mail_outbox::Model) -> Result<Message, SendError> {
        let to: Mailbox = mail
            .recipient
            .parse()
            .map_err(|_| SendError::permanent("the recipient is not a mailbox"))?;
        let (Some(text), Some(html)) = (&mail.body_text, &mail.body_html) else {
            return Err(SendError::permanent("the mail has no body"));
        };
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(None)
            .multipart(MultiPart::alternative_plain_html(
                text.clone(),
                html.clone(),
            ))
            .map_err(|err| SendError::permanent(err.to_string()))
    }
}
