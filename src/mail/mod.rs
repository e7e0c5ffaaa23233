//! Mail: what is sent ([`templates`]), how ([`Mailer`]: SMTP, or `.eml` files in the
//! development outbox folder), and the worker that delivers the database's outbox with retries
//! ([`Worker`]). The flows only queue mails (a row written with the change that causes it);
//! no request waits for a mail server.

pub mod templates;
mod transport;
mod worker;

pub use self::{
    transport::{MailError, Mailer, SendError},
    worker::{DeliverySettings, MailQueue, SMTP_TIMEOUT, Worker},
};
