//! The delivery worker: claims due mails from the outbox, sends them, and records what
//! happened. Every instance runs one; a claim is a lease (`LEASE`), so each mail goes to one
//! worker at a time, and a mail whose worker died is claimed again once the lease ends.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::json;
use tokio::sync::Notify;

use super::Mailer;
use crate::{
    audit::{Audit, Event, EventType},
    client::ClientInfo,
    db::{Database, entities::mail_outbox},
    telemetry::metrics::Metrics,
};

/// How long a claimed mail belongs to its worker. Longer than an SMTP exchange can take
/// (`SMTP_TIMEOUT`), so a live worker never loses a mail it is sending to another.
const LEASE: Duration = Duration::from_secs(120);
/// The longest one SMTP exchange may take.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Mails claimed at once.
const BATCH: u64 = 10;

/// Retries: the n-th failure waits `retry_base * 2^(n-1)`, at most `retry_max`; after
/// `max_attempts` attempts the mail is dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// `MAIL_FROM`.
    pub from: String,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often the outbox is checked for mails queued by other instances and for retries.
    pub poll_every: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            from: "Latchkey <no-reply@localhost>".into(),
            max_attempts: 10,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            poll_every: Duration::from_secs(2),
        }
    }
}

impl DeliverySettings {
    /// The wait after the `attempts`-th failed attempt.
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }
}

/// Wakes this instance's worker when a flow has queued a mail, so it goes out at once rather
/// than at the next poll.
#[derive(Clone, Default)]
pub struct MailQueue {
    wake: Arc<Notify>,
}

impl MailQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn queued(&self) {
        self.wake.notify_one();
    }
}

/// Delivers the outbox.
pub struct Worker {
    pub db: Database,
    pub mailer: Arc<Mailer>,
    pub settings: DeliverySettings,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub queue: MailQueue,
}

impl Worker {
    /// Delivers until the task is dropped: everything due, then waits for a wake-up or the
    /// next poll.
    pub async fn run(self) {
        loop {
            self.deliver_due().await;
            tokio::select! {
                () = self.queue.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_every) => {}
            }
        }
    }

    /// Delivers every due mail, batch by batch; how many were attempted.
    pub async fn deliver_due(&self) -> usize {
        let mut attempted = 0;
        loop {
            let now = Utc::now();
            let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
            let batch = match self.db.outbox().claim(now, lease_until, BATCH).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the mail outbox; retrying later");
                    return attempted;
                }
            };
            if batch.is_empty() {
                return attempted;
            }
            attempted += batch.len();
            for mail in batch {
                self.deliver(mail).await;
            }
        }
    }

    async fn deliver(&self, mail: mail_outbox::Model) {
        let result = self.mailer.send(&mail).await;
        let (id, attempts) = (mail.id, mail.attempts);
        let outcome = match &result {
            Ok(file) => {
                if let (Some(file), Some(link)) = (file, &mail.link) {
                    tracing::info!(file = %file.display(), link = %link, "mail written to the outbox folder");
                }
                self.db.outbox().delete(id).await
            }
            Err(err) if err.permanent || attempts >= self.max_attempts() => {
                self.db.outbox().bury(id, &err.message).await
            }
            Err(err) => {
                let wait = self
                    .settings
                    .retry_after(u32::try_from(attempts).unwrap_or(1));
                let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                self.db.outbox().reschedule(id, next, &err.message).await
            }
        };
        if let Err(err) = outcome {
            // The lease runs out and the mail is attempted again: at worst sent twice.
            tracing::warn!(mail_id = %id, error = %err, "cannot record a delivery attempt");
        }
        self.record(&mail, result.err()).await;
    }

    fn max_attempts(&self) -> i32 {
        i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX)
    }

    /// Logs, counts and audits one attempt.
    async fn record(&self, mail: &mail_outbox::Model, error: Option<super::SendError>) {
        let (kind, id, attempts) = (mail.kind.as_str(), mail.id, mail.attempts);
        let (result, event) = match &error {
            None => {
                tracing::info!(mail_id = %id, kind, attempts, "mail sent");
                ("sent", EventType::MailSent)
            }
            Some(err) => {
                let dead = err.permanent || attempts >= self.max_attempts();
                let result = if dead { "dead" } else { "retry" };
                tracing::warn!(mail_id = %id, kind, attempts, dead, error = %err.message, "mail delivery failed");
                (result, EventType::MailDeliveryFailed)
            }
        };
        self.metrics
            .mail_deliveries
            .with_label_values(&[kind, result])
            .inc();
        let mut detail = json!({"mail_id": id, "kind": kind, "attempts": attempts});
        if let Some(err) = error {
            detail["result"] = json!(result);
            detail["error"] = json!(err.message.chars().take(200).collect::<String>());
        }
        let event = Event::new(event, mail.user_id, None).detail(detail);
        self.audit.record(&ClientInfo::local(), event).await;
    }
}
