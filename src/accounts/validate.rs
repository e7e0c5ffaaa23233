//! Input rules of API.md section 1, collected per field so that one refusal lists every
//! problem. Field names are those of the API's request bodies.

use super::AccountError;

/// One field-level problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The request field, e.g. `email`.
    pub field: String,
    /// What is wrong with it.
    pub issue: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.issue)
    }
}

pub const NAME_MAX_CHARS: usize = 100;
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const EMAIL_MAX_CHARS: usize = 254;

/// Collects field errors; `finish` turns them into one 422.
#[derive(Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&mut self, field: &str, issue: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            issue: issue.into(),
        });
    }

    /// The value, or a `required` error when it is absent or null.
    pub fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.fail(field, "is required");
        }
        value
    }

    /// A display name: trimmed, 1 to 100 characters, no control characters.
    pub fn name(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = self.required(field, value)?;
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            self.fail(field, "must not be empty");
        } else if chars > NAME_MAX_CHARS {
            self.fail(
                field,
                format!("must be at most {NAME_MAX_CHARS} characters"),
            );
        } else if trimmed.chars().any(is_forbidden_in_text) {
            self.fail(
                field,
                "must not contain control or text-direction characters",
            );
        } else {
            return Some(trimmed.to_owned());
        }
        None
    }

    /// An email address: trimmed and lower-cased first, then checked.
    pub fn email(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = self.required(field, value)?;
        let email = normalize_email(&value);
        match email_problem(&email) {
            None => Some(email),
            Some(issue) => {
                self.fail(field, issue);
                None
            }
        }
    }

    /// A new password: 8 to 128 Unicode scalar values, taken as is (never trimmed).
    pub fn new_password(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = self.required(field, value)?;
        let chars = value.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            self.fail(
                field,
                format!("must be at least {PASSWORD_MIN_CHARS} characters"),
            );
            None
        } else if chars > PASSWORD_MAX_CHARS {
            self.fail(
                field,
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            );
            None
        } else {
            Some(value)
        }
    }

    /// A password being checked against a stored one: present and not absurdly long (so no
    /// one can make us hash megabytes), but any length rule is left to the comparison.
    pub fn given_password(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = self.required(field, value)?;
        if value.chars().count() > PASSWORD_MAX_CHARS {
            self.fail(
                field,
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            );
            return None;
        }
        Some(value)
    }

    /// The checked values when no rule was broken, else one refusal with every field error.
    /// Pass the values combined with `Option::zip`: each is `Some` exactly when it passed.
    /// The error of a well-formed secret that does not match: a password, a code.
    pub fn incorrect(field: &str) -> AccountError {
        AccountError::Invalid(vec![FieldError {
            field: field.to_owned(),
            issue: "is incorrect".into(),
        }])
    }

    pub fn finish<T>(self, values: Option<T>) -> Result<T, AccountError> {
        match values {
            Some(values) if self.errors.is_empty() => Ok(values),
            _ if !self.errors.is_empty() => Err(AccountError::Invalid(self.errors)),
            _ => Err(AccountError::Internal(anyhow::anyhow!(
                "a field failed validation without an error"
            ))),
        }
    }
}

/// Control characters (NUL would also break PostgreSQL text) and the bidirectional override
/// characters that make a name display as something else.
fn is_forbidden_in_text(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether text holds control characters (NUL would also break PostgreSQL text).
pub fn has_control_chars(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// An address as the audit trail keeps it: at most `EMAIL_MAX_CHARS` characters of what the
/// client typed, so a failed login cannot write megabytes into the trail.
pub fn bounded_email(email: &str) -> &str {
    email
        .char_indices()
        .nth(EMAIL_MAX_CHARS)
        .map_or(email, |(end, _)| &email[..end])
}

/// Whether an address can belong to an account at all: no account has a longer one, or one
/// with control characters (which PostgreSQL text would also refuse).
pub fn could_be_an_account(email: &str) -> bool {
    email.chars().count() <= EMAIL_MAX_CHARS && !has_control_chars(email)
}

/// Emails are trimmed and lower-cased before they are validated, stored or looked up.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("must not be empty");
    }
    if email.chars().count() > EMAIL_MAX_CHARS {
        return Some("must be at most 254 characters");
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || is_forbidden_in_text(c) || matches!(c, '<' | '>' | '"' | ','))
    {
        return Some("must not contain spaces, control characters, quotes or brackets");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Some("must be an email address like name@example.com");
    };
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.chars().count() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local.is_empty() || local.chars().count() > 64 || domain.contains('@') || !labels_ok {
        return Some("must be an email address like name@example.com");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_then_checked() {
        let mut v = Validator::new();
        assert_eq!(
            v.email("email", Some("  Ada@Example.COM ".into()))
                .as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "a",
            "a@b",
            "a@@b.c",
            "a b@c.d",
            "a@-b.c",
            "a@b..c",
            "\u{0}@b.c",
        ] {
            assert_eq!(v.email("email", Some(bad.into())), None, "{bad:?}");
        }
    }

    #[test]
    fn passwords_count_unicode_scalars_and_are_not_trimmed() {
        let mut v = Validator::new();
        assert_eq!(
            v.new_password("p", Some("ééééééé ".into())).as_deref(),
            Some("ééééééé ")
        );
        assert_eq!(v.new_password("p", Some("ééééééé".into())), None);
        assert_eq!(v.new_password("p", Some("x".repeat(129))), None);
        assert!(v.new_password("p", Some("🔑".repeat(128))).is_some());
    }
}
