//! A real SMTP server in the test process (mailin-embedded): every test's Latchkey sends to it
//! over TCP, and the test reads what arrived, parsed with mail-parser. Each test uses its own
//! addresses, so one server serves the whole run. Recipients starting with `bounce-` are
//! refused for good (550), as a mail server refuses an unknown mailbox.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use mail_parser::MessageParser;
use mailin_embedded::{Handler, Response, Server, response};

/// One mail as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub raw: String,
}

impl Received {
    /// A mail from its raw bytes (as received, or as an `.eml` file holds it).
    pub fn parse(from: String, to: Vec<String>, raw: &[u8]) -> Self {
        let message = MessageParser::default()
            .parse(raw)
            .expect("a parsable mail");
        Self {
            from,
            to,
            subject: message.subject().unwrap_or_default().to_owned(),
            text: message
                .body_text(0)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            html: message
                .body_html(0)
                .map(|h| h.into_owned())
                .unwrap_or_default(),
            raw: String::from_utf8_lossy(raw).into_owned(),
        }
    }

    /// The one `http(s)://` link of the text part.
    pub fn link(&self) -> String {
        let links: Vec<&str> = self
            .text
            .split_whitespace()
            .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
            .collect();
        assert_eq!(links.len(), 1, "one link in {:?}", self.text);
        links[0].to_owned()
    }

    /// The `token` query parameter of the link.
    pub fn token(&self) -> String {
        let url = reqwest::Url::parse(&self.link()).expect("a URL");
        url.query_pairs()
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned())
            .expect("a token in the link")
    }
}

#[derive(Clone, Default)]
struct Capture {
    inbox: Arc<Mutex<Vec<Received>>>,
    // Per connection (the server clones the handler for each).
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Capture {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.from = from.to_owned();
        self.to.clear();
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if to.starts_with("bounce-") {
            return response::NO_MAILBOX;
        }
        self.to.push(to.to_owned());
        response::OK
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = Received::parse(self.from.clone(), self.to.clone(), &self.data);
        self.inbox.lock().expect("inbox").push(mail);
        response::OK
    }
}

/// The server every test shares.
pub struct Smtp {
    pub addr: SocketAddr,
    inbox: Arc<Mutex<Vec<Received>>>,
}

pub static SMTP: LazyLock<Smtp> = LazyLock::new(|| {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an SMTP port");
    let addr = listener.local_addr().expect("SMTP address");
    let capture = Capture::default();
    let inbox = capture.inbox.clone();
    let mut server = Server::new(capture);
    server.with_name("smtp.test").with_tcp_listener(listener);
    std::thread::spawn(move || server.serve().expect("the test SMTP server"));
    Smtp { addr, inbox }
});

impl Smtp {
    /// `SMTP_URL` for this server (plain: it is on this machine).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every mail received so far for `to`.
    pub fn mails_to(&self, to: &str) -> Vec<Received> {
        let inbox = self.inbox.lock().expect("inbox");
        inbox
            .iter()
            .filter(|mail| mail.to.iter().any(|r| r == to))
            .cloned()
            .collect()
    }

    /// Waits (up to 20 s) until `count` mails for `to` have arrived, and returns them.
    pub async fn wait_for(&self, to: &str, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mails = self.mails_to(to);
            if mails.len() >= count {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} mail(s) for {to} did not arrive (got {})",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the `n`-th (1-based) mail to `to`.
    pub async fn nth(&self, to: &str, n: usize) -> Received {
        self.wait_for(to, n).await[n - 1].clone()
    }
}

/// Points `settings` at the shared server, with a worker quick enough for tests.
pub fn use_smtp(settings: &mut latchkey::config::Settings) {
    send_to(settings, &SMTP.url());
}

/// Points `settings` at `url` (the shared server, or a proxy in front of it).
pub fn send_to(settings: &mut latchkey::config::Settings, url: &str) {
    settings.mail.smtp_url = Some(url.to_owned().into());
    settings.mail.delivery.poll_every = Duration::from_millis(50);
    settings.mail.delivery.retry_base = Duration::from_millis(100);
    settings.mail.delivery.retry_max = Duration::from_millis(400);
    settings.accounts.email.verification = latchkey::accounts::Verification::Optional;
}
