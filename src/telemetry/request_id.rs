//! A request id per request: taken from `X-Request-Id` when it is a sane token, generated
//! otherwise, echoed back in the response and attached to every log line of the request.

use poem::{Request, http::HeaderValue};

pub const HEADER: &str = "x-request-id";

/// The client's id if it is 1-128 characters of `[A-Za-z0-9._-]` (anything else could smuggle
/// text into logs), else a new UUID. Kept as the header value it is echoed back as, so the
/// client's is shared with the request rather than copied.
pub fn for_request(req: &Request) -> HeaderValue {
    req.headers()
        .get(HEADER)
        .filter(|id| is_sane(id.as_bytes()))
        .cloned()
        .unwrap_or_else(new_id)
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn new_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is visible ASCII, always a valid header value.
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced_by_a_uuid() {
        let with = |id: &str| {
            for_request(&Request::builder().header(HEADER, id).finish())
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(with("abc-123_x.y"), "abc-123_x.y");
        for bad in ["", "a b", "a\"b", "é", &"a".repeat(129)] {
            let id = with(bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} gave {id:?}");
        }
        let new = for_request(&Request::builder().finish());
        let new = uuid::Uuid::parse_str(new.to_str().unwrap()).unwrap();
        assert_eq!(new.get_version_num(), 4);
    }
}
