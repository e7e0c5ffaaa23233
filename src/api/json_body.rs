//! A JSON body: requests parsed with their problems reported per field, answers written
//! straight from the value with serde.
//!
//! Requests: poem-openapi's `Json<T>` reports the Rust type it was parsing rather than the
//! field at fault; `JsonBody<T>` checks the body against `T`'s schema first, so a body that is
//! not JSON, not an object, or has a field of the wrong type gets 400 `malformed_request` with
//! each wrong field named in `details`.
//!
//! Answers:
//! poem-openapi's `Json<T>` turns the value into a `serde_json::Value` tree first (a string and
//! a map entry allocated per field) and then writes the tree out; on the hot path's answer,
//! `GET /users/me`, that costs measurably (bench/README.md). `JsonBody<T>` documents the same
//! schema (`T: Type`) and writes `T`'s `Serialize` form; a test holds the two forms equal for
//! every type sent this way.

use poem::{
    FromRequest, IntoResponse, Request, RequestBody, Response,
    error::ResponseError,
    http::{HeaderValue, header},
};
use poem_openapi::{
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};
use serde::Serialize;

use super::{
    error::ApiError,
    request::{fields_of, json_object},
};

/// Room for the response's headers: the content type and those the outer layers add to every
/// API response (security headers, `Cache-Control`, `Vary`, the request id, CORS), so the
/// header map is allocated once, not grown on the way out.
const RESPONSE_HEADERS: usize = 12;

/// A JSON body; as an answer, `T`'s serde form must match its poem-openapi form.
pub struct JsonBody<T>(pub T);

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        let value = json_object(&bytes, &fields_of::<T>())?;
        T::parse_from_json(Some(value))
            .map(Self)
            .map_err(|_| ApiError::malformed("the request body does not match its schema").into())
    }
}

poem_openapi::impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Serialize + Send> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => {
                let mut response = Response::builder().body(body);
                // Still empty, so this is the map's first and only allocation.
                let headers = response.headers_mut();
                headers.reserve(RESPONSE_HEADERS);
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(<Self as Payload>::CONTENT_TYPE),
                );
                response
            }
            // Plain structs of strings, ids and dates always serialize; if one ever did not,
            // the client gets the service's JSON error, not a half-written body.
            Err(err) => {
                ApiError::internal(format_args!("serializing a response: {err}")).as_response()
            }
        }
    }
}
