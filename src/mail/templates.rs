//! The mails' subjects and bodies, from the templates in `templates/mail/` (compiled in). HTML
//! parts are escaped; the text parts carry no secret but the link.

use std::{sync::LazyLock, time::Duration};

use minijinja::{AutoEscape, Environment, context};

/// Which mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A link proving the account's address.
    VerifyEmail,
    /// A link to choose a new password.
    ResetPassword,
    /// A link, to the new address, confirming a change of address.
    ChangeEmail,
    /// To the old address: a change was asked for (no link).
    EmailChangeNotice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VerifyEmail => "verify_email",
            Kind::ResetPassword => "reset_password",
            Kind::ChangeEmail => "change_email",
            Kind::EmailChangeNotice => "email_change_notice",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::VerifyEmail => "Confirm your email address",
            Kind::ResetPassword => "Reset your password",
            Kind::ChangeEmail => "Confirm your new email address",
            Kind::EmailChangeNotice => "A change of your email address was requested",
        }
    }
}

/// What a mail says about its reader.
pub struct Context<'a> {
    /// The account's name.
    pub name: &'a str,
    /// The address the mail is about (the account's, or the new one for `ChangeEmail`).
    pub email: &'a str,
    /// For `EmailChangeNotice`: the requested address.
    pub new_email: Option<&'a str>,
    pub link: Option<&'a str>,
    /// How long the link works.
    pub lifetime: Duration,
    /// The service's name as readers know it (the public URL's host).
    pub service: &'a str,
}

/// A mail ready to queue.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    let sources = [
        (
            "layout.html",
            include_str!("../../templates/mail/layout.html"),
        ),
        (
            "verify_email.txt",
            include_str!("../../templates/mail/verify_email.txt"),
        ),
        (
            "verify_email.html",
            include_str!("../../templates/mail/verify_email.html"),
        ),
        (
            "reset_password.txt",
            include_str!("../../templates/mail/reset_password.txt"),
        ),
        (
            "reset_password.html",
            include_str!("../../templates/mail/reset_password.html"),
        ),
        (
            "change_email.txt",
            include_str!("../../templates/mail/change_email.txt"),
        ),
        (
            "change_email.html",
            include_str!("../../templates/mail/change_email.html"),
        ),
        (
            "email_change_notice.txt",
            include_str!("../../templates/mail/email_change_notice.txt"),
        ),
        (
            "email_change_notice.html",
            include_str!("../../templates/mail/email_change_notice.html"),
        ),
    ];
    for (name, source) in sources {
        // The templates are part of the binary: a syntax error is caught by the unit test.
        if let Err(err) = env.add_template(name, source) {
            tracing::error!(template = name, error = %err, "broken mail template");
        }
    }
    env
});

/// Renders the subject, text and HTML of `kind`.
pub fn render(kind: Kind, ctx: &Context<'_>) -> Result<Rendered, minijinja::Error> {
    let subject = kind.subject();
    let values = context! {
        subject => subject,
        name => ctx.name,
        email => ctx.email,
        new_email => ctx.new_email,
        link => ctx.link,
        lifetime => lifetime(ctx.lifetime),
        service => ctx.service,
    };
    let part = |ext: &str| {
        TEMPLATES
            .get_template(&format!("{}.{ext}", kind.as_str()))
            .and_then(|t| t.render(&values))
    };
    Ok(Rendered {
        subject: subject.to_owned(),
        text: part("txt")?,
        html: part("html")?,
    })
}

/// "24 hours", "30 minutes", "1 hour": the largest whole unit.
pub fn lifetime(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = match secs {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(link: Option<&'static str>) -> Context<'static> {
        Context {
            name: "Ada <script>",
            email: "ada@example.com",
            new_email: Some("new@example.com"),
            link,
            lifetime: Duration::from_secs(1800),
            service: "auth.example.com",
        }
    }

    #[test]
    fn every_kind_renders_with_its_link_and_escaped_html() {
        let link = "https://auth.example.com/account/reset-password?token=abc_-123";
        for kind in [Kind::VerifyEmail, Kind::ResetPassword, Kind::ChangeEmail] {
            let mail = render(kind, &ctx(Some(link))).expect("renders");
            assert!(mail.text.contains(link), "{kind:?}: {}", mail.text);
            // minijinja escapes `/` too: the href is the link once entities are decoded.
            let escaped = link.replace('/', "&#x2f;");
            assert!(
                mail.html.contains(&format!("href=\"{escaped}\"")),
                "{}",
                mail.html
            );
            assert!(mail.text.contains("30 minutes"));
            assert!(mail.html.contains("Ada &lt;script&gt;"), "{}", mail.html);
            assert!(!mail.html.contains("<script>"));
        }
        let notice = render(Kind::EmailChangeNotice, &ctx(None)).expect("renders");
        assert!(notice.text.contains("new@example.com"));
        assert!(!notice.text.contains("http"), "the notice has no link");
    }

    #[test]
    fn lifetimes_read_naturally() {
        assert_eq!(lifetime(Duration::from_secs(86_400)), "1 day");
        assert_eq!(lifetime(Duration::from_secs(3_600)), "1 hour");
        assert_eq!(lifetime(Duration::from_secs(1_800)), "30 minutes");
        assert_eq!(lifetime(Duration::from_secs(90)), "90 seconds");
    }
}
