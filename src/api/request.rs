//! What handlers need to know about the request itself: the client (IP and user agent), the
//! headers the CSRF check reads, and an optional JSON body.

use std::{borrow::Cow, net::IpAddr};

use ipnet::IpNet;
use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

use super::error::{ApiError, FieldError};
use crate::{auth::csrf::Provenance, client::ClientInfo, state::AppState};

/// User agents are stored with sessions; longer ones are cut to this many characters.
const USER_AGENT_MAX_CHARS: usize = 256;

/// The client's IP: the socket peer, unless the peer is a trusted proxy, in which case
/// `X-Forwarded-For` is walked from the right past trusted hops. A header from an untrusted
/// peer is ignored, so it cannot be spoofed.
pub fn client_ip(req: &Request, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr()?.ip();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in req.headers().get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else { break };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        return Some(client);
                    }
                }
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

/// The client of a request, as the flows record it.
pub fn client(state: &AppState, req: &Request) -> ClientInfo {
    ClientInfo {
        ip: client_ip(req, &state.settings.http.trusted_proxies),
        user_agent: user_agent(req),
    }
}

/// The headers the CSRF check reads.
pub fn provenance(req: &Request) -> Provenance<'_> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    Provenance {
        sec_fetch_site: header("sec-fetch-site"),
        origin: header("origin"),
        referer: header("referer"),
    }
}

/// The `User-Agent` header, truncated.
pub fn user_agent(req: &Request) -> Option<String> {
    req.headers()
        .get(poem::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| {
            ua.trim()
                .chars()
                .take(USER_AGENT_MAX_CHARS)
                .collect::<String>()
        })
        .filter(|ua| !ua.is_empty())
}

/// A JSON request body that may be absent: an empty body (with or without a content type)
/// is `None`; a non-empty one must be `application/json`.
pub struct OptionalJson<T>(pub Option<T>);

impl<'a, T: ParseFromJSON + ToJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Json<T> as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Json<T> as Payload>::CONTENT_TYPE,
                schema: <Json<T> as Payload>::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        req: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let bytes = body.take()?.into_bytes().await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        match req.content_type() {
            Some(ct) if <Json<T> as Payload>::check_content_type(ct) => {}
            Some(ct) => {
                return Err(poem_openapi::error::ContentTypeError::NotSupported {
                    content_type: ct.to_owned(),
                }
                .into());
            }
            None => return Err(poem_openapi::error::ContentTypeError::ExpectContentType.into()),
        }
        let value = json_object(&bytes, &fields_of::<T>())?;
        T::parse_from_json(Some(value))
            .map(|value| Self(Some(value)))
            .map_err(|_| ApiError::malformed("the request body does not match its schema").into())
    }
}

/// A JSON string, strictly: poem-openapi's `String` would also accept numbers and booleans
/// (`5` -> `"5"`), and the contract says a field of the wrong type is 400 `malformed_request`.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Text(text)),
            // The message never echoes the value: it may be a password.
            _ => Err(ParseError::custom("expected a string")),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// Unwraps an optional `Text` field.
pub fn text(field: Option<Text>) -> Option<String> {
    field.map(Text::into_inner)
}

/// The fields of a request object and the JSON type each takes, from its schema.
pub(super) fn fields_of<T: Type>() -> Vec<(&'static str, &'static str)> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    let schema = match T::schema_ref() {
        MetaSchemaRef::Reference(name) => registry.schemas.get(&name).cloned(),
        MetaSchemaRef::Inline(schema) => Some(*schema),
    };
    schema
        .map(|schema| {
            schema
                .properties
                .iter()
                .map(|(name, field)| match field {
                    MetaSchemaRef::Inline(field) => (*name, field.ty),
                    MetaSchemaRef::Reference(_) => (*name, "object"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The body as a JSON object whose fields have their types, or the 400 that says what is off.
pub(super) fn json_object(
    bytes: &[u8],
    fields: &[(&'static str, &'static str)],
) -> Result<Value, ApiError> {
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed(format!(
            "the request body is empty: send a JSON object with the fields {}",
            names.join(", ")
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        ApiError::malformed(format!("the request body is not valid JSON ({err})"))
    })?;
    let Value::Object(object) = &value else {
        return Err(ApiError::malformed(
            "the request body must be a JSON object",
        ));
    };
    let wrong: Vec<FieldError> = fields
        .iter()
        .filter_map(|(name, ty)| {
            let given = object.get(*name).filter(|v| !v.is_null())?;
            let fits = match *ty {
                "string" => given.is_string(),
                "boolean" => given.is_boolean(),
                "integer" => given.is_i64() || given.is_u64(),
                "number" => given.is_number(),
                "array" => given.is_array(),
                _ => given.is_object(),
            };
            (!fits).then(|| FieldError {
                field: (*name).to_owned(),
                issue: format!("must be {}", article(ty)),
            })
        })
        .collect();
    if wrong.is_empty() {
        return Ok(value);
    }
    Err(ApiError {
        details: wrong,
        ..ApiError::malformed("some fields have the wrong type; see details")
    })
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "object" | "array" => format!("an {ty}"),
        other => format!("a {other}"),
    }
}
