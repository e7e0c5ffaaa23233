//! Listing pages: by number (`page`, `per_page`), or after the previous page (`after`, the
//! opaque `next` a page hands out), which reads only the page however deep it is.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::validate::Validator;
use crate::db::{COUNT_CAP, PageStart};

/// Largest page size.
pub const MAX_PER_PAGE: i64 = 100;
/// Largest page number: keeps `(page - 1) * per_page` far inside what the database accepts.
pub const MAX_PAGE: i64 = 10_000_000;
const DEFAULT_PER_PAGE: i64 = 20;
/// Marks the cursor's layout, so a later one can be told apart.
const CURSOR_VERSION: &str = "1";

/// One page of a listing, how many items match in all, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub per_page: i64,
    pub total: u64,
    /// Whether more than `total` match: counting stopped at [`COUNT_CAP`].
    pub total_capped: bool,
    /// The `after` of the following page; none when this page is the last.
    pub next: Option<String>,
}

/// A listing's page parameters as the client sent them: `page` from 1 (default 1), `per_page`
/// 1 to 100 (default 20), or `after` instead of `page`.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub page: Option<String>,
    pub per_page: Option<String>,
    pub after: Option<String>,
}

/// Where a checked [`PageQuery`] starts and how many rows it asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paging {
    pub page: i64,
    pub per_page: i64,
    pub start: PageStart,
}

impl Paging {
    /// Rows to read: one more than the page, to know whether another page follows.
    pub fn limit(&self) -> u64 {
        self.per_page.unsigned_abs() + 1
    }

    /// The page made of `rows` (read with [`Paging::limit`]) and `count` (capped or not);
    /// `key` gives a row's sort key, from which the next page's `after` is made.
    pub fn page<T>(
        self,
        mut rows: Vec<T>,
        count: Count,
        key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
    ) -> Page<T> {
        let (total, total_capped) = match count {
            Count::Exact(n) => (n, false),
            Count::Capped(n) => (n.min(COUNT_CAP), n > COUNT_CAP),
        };
        let more = rows.len() > self.per_page.unsigned_abs() as usize;
        rows.truncate(self.per_page.unsigned_abs() as usize);
        let next = rows
            .last()
            .filter(|_| more)
            .map(|last| encode_cursor(self.page + 1, key(last)));
        Page {
            items: rows,
            page: self.page,
            per_page: self.per_page,
            total,
            total_capped,
            next,
        }
    }
}

/// How many rows match, as the repository counted them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Count {
    Exact(u64),
    /// Counted up to [`COUNT_CAP`] (past it: `COUNT_CAP + 1`).
    Capped(u64),
}

/// Checks `query`: `page` and `after` exclude each other; field errors go into `v`.
pub(super) fn paging(v: &mut Validator, query: PageQuery) -> Option<Paging> {
    let per_page = bounded(
        v,
        "per_page",
        query.per_page,
        DEFAULT_PER_PAGE,
        1..=MAX_PER_PAGE,
    );
    let (page, start) = match (query.page, query.after) {
        (Some(_), Some(_)) => {
            v.fail("after", "give either page or after, not both");
            return None;
        }
        (page, None) => {
            let page = bounded(v, "page", page, 1, 1..=MAX_PAGE);
            let (page, size) = page.zip(per_page)?;
            let rows = (page.unsigned_abs() - 1) * size.unsigned_abs();
            (page, PageStart::Skip(rows))
        }
        (None, Some(after)) => {
            let Some((page, at, id)) = decode_cursor(after.trim()) else {
                v.fail("after", "is not a cursor this listing handed out (`next`)");
                return None;
            };
            (page, PageStart::After(at, id))
        }
    };
    Some(Paging {
        page,
        per_page: per_page?,
        start,
    })
}

/// A whole-number query parameter within `range`; absent means `default`. Anything else,
/// including numbers too large for 64 bits, is a field error, never a 400 or 500.
fn bounded(
    v: &mut Validator,
    field: &str,
    raw: Option<String>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Option<i64> {
    let Some(raw) = raw else {
        return Some(default);
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            let (from, to) = (range.start(), range.end());
            v.fail(field, format!("must be a whole number from {from} to {to}"));
            None
        }
    }
}

/// The page number it leads to and the last row's sort key, as one base64url token. Not
/// secret and not signed: a forged one only moves where an admin's own listing starts.
fn encode_cursor(page: i64, (at, id): (DateTime<Utc>, Uuid)) -> String {
    let text = format!(
        "{CURSOR_VERSION}.{page}.{}.{}.{}",
        at.timestamp(),
        at.timestamp_subsec_nanos(),
        id.simple()
    );
    URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Option<(i64, DateTime<Utc>, Uuid)> {
    // A cursor is ~70 characters; anything much longer is not one.
    if cursor.len() > 200 {
        return None;
    }
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let mut parts = text.split('.');
    if parts.next()? != CURSOR_VERSION {
        return None;
    }
    let page = parts.next()?.parse::<i64>().ok()?.clamp(1, MAX_PAGE);
    let secs = parts.next()?.parse::<i64>().ok()?;
    let nanos = parts.next()?.parse::<u32>().ok()?;
    let at = DateTime::from_timestamp(secs, nanos)?;
    let id = Uuid::try_parse(parts.next()?).ok()?;
    parts.next().is_none().then_some((page, at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_anything_else_is_refused() {
        let at = DateTime::from_timestamp(1_764_000_000, 123_456_789).unwrap();
        let id = Uuid::new_v4();
        let cursor = encode_cursor(7, (at, id));
        assert_eq!(decode_cursor(&cursor), Some((7, at, id)));
        for bad in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("2.7.1764000000.0.abc"),
            &URL_SAFE_NO_PAD.encode(format!("1.7.1764000000.0.{}.x", id.simple())),
            &URL_SAFE_NO_PAD.encode(format!("1.7.99999999999999999.0.{}", id.simple())),
            &"A".repeat(400),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
