//! `/api/v1/users/me`: the signed-in user's own account.

use chrono::{DateTime, Utc};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Serialize;
use uuid::Uuid;

use super::{
    ApiTags,
    cookies::CookiePolicy,
    error::{Failure, error_set},
    guard::Authenticated,
    json_body::JsonBody,
    request::{Text, client, text},
};
use crate::{db::entities::user, state::AppState};

error_set!(
    /// What reading the signed-in user can answer.
    MeErrors: [GUARD, SERVER]
);
error_set!(
    /// What renaming can answer.
    RenameErrors: [BODY, GUARD, SERVER], CsrfRejected
);
error_set!(
    /// What a password change can answer.
    PasswordErrors: [BODY, GUARD, SERVER], CsrfRejected, RateLimited, Busy
);
error_set!(
    /// What deleting one's account can answer.
    DeleteMeErrors: [BODY, GUARD, SERVER], CsrfRejected, LastAdmin, RateLimited, Busy
);

// Also `Serialize`, for `JsonBody`: the serde form is the poem-openapi form (a test checks).
// (A plain comment: doc comments become the schema's description in the spec.)
/// A user as clients see it. Never carries the password hash.
#[derive(Debug, Clone, Object, Serialize)]
pub struct UserResponse {
    pub id: Uuid,
    pub name: String,
    /// Trimmed and lower-cased.
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    /// Whether the user proved the address (a verification link, a password reset, a
    /// confirmed change of address).
    pub email_verified: bool,
    /// Whether logging in needs a second factor (TOTP or a recovery code).
    pub mfa_enabled: bool,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// A time as poem-openapi writes it (`+00:00`, where serde's chrono form writes `Z`).
fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339())
}

impl From<user::Model> for UserResponse {
    fn from(user: user::Model) -> Self {
        Self {
            id: user.id,
            name: user.name,
            email: user.email,
            role: user.role.as_str().to_owned(),
            email_verified: user.email_verified_at.is_some(),
            mfa_enabled: user.mfa_enabled_at.is_some(),
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// `{"user": UserResponse}`.
#[derive(Debug, Clone, Object, Serialize)]
pub struct UserEnvelope {
    pub user: UserResponse,
}

impl From<user::Model> for UserEnvelope {
    fn from(user: user::Model) -> Self {
        Self { user: user.into() }
    }
}

/// Changes to the caller's profile.
#[derive(Object)]
pub struct UpdateMeRequest {
    /// Required: trimmed, 1 to 100 characters.
    pub name: Option<Text>,
}

/// A password change.
#[derive(Object)]
pub struct ChangePasswordRequest {
    /// Required: the password in use now.
    pub current_password: Option<Text>,
    /// Required: 8 to 128 characters (Unicode scalar values), used exactly as given.
    pub new_password: Option<Text>,
}

/// Confirmation for deleting the account.
#[derive(Object)]
pub struct DeleteAccountRequest {
    /// Required: the account's password.
    pub password: Option<Text>,
}

#[derive(ApiResponse)]
pub enum NoContentResult {
    /// Done.
    #[oai(status = 204)]
    Done,
}

#[derive(ApiResponse)]
pub enum UserResult {
    /// The user.
    #[oai(status = 200)]
    Ok(JsonBody<UserEnvelope>),
}

pub struct UsersApi;

#[OpenApi(prefix_path = "/api/v1/users", tag = "ApiTags::Users")]
impl UsersApi {
    /// The signed-in user.
    #[oai(path = "/me", method = "get", operation_id = "get_me")]
    async fn get_me(&self, auth: Authenticated) -> Result<UserResult, Failure<MeErrors>> {
        Ok(UserResult::Ok(JsonBody(auth.caller.user.into())))
    }

    /// Change the signed-in user's name.
    #[oai(path = "/me", method = "patch", operation_id = "update_me")]
    async fn update_me(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Authenticated,
        body: JsonBody<UpdateMeRequest>,
    ) -> Result<UserResult, Failure<RenameErrors>> {
        let user = state
            .accounts
            .rename(auth.caller, text(body.0.name))
            .await?;
        Ok(UserResult::Ok(JsonBody(user.into())))
    }

    /// Change the signed-in user's password. Every other session is revoked; this one stays.
    /// A wrong `current_password` is 422 `validation_failed`. Password checks are limited per
    /// user (`RATE_LIMIT_PASSWORD_CHECK_PER_USER`) and wrong ones count toward the account's
    /// login backoff: 429 `rate_limited` with `Retry-After`.
    #[oai(
        path = "/me/password",
        method = "post",
        operation_id = "change_password"
    )]
    async fn change_password(
        &self,
        state: poem::web::Data<&AppState>,
        req: &poem::Request,
        auth: Authenticated,
        body: JsonBody<ChangePasswordRequest>,
    ) -> Result<NoContentResult, Failure<PasswordErrors>> {
        let body = body.0;
        let (current, new) = (text(body.current_password), text(body.new_password));
        let client = client(&state, req);
        state
            .accounts
            .change_password(auth.caller, current, new, &client)
            .await?;
        Ok(NoContentResult::Done)
    }

    /// Delete the signed-in user's account, confirmed with its password. Every session is
    /// revoked and this client's cookies cleared. The last active admin cannot delete itself:
    /// 409 `last_admin`. The password check is limited as for a password change (429).
    #[oai(path = "/me", method = "delete", operation_id = "delete_me")]
    async fn delete_me(
        &self,
        state: poem::web::Data<&AppState>,
        req: &poem::Request,
        auth: Authenticated,
        body: JsonBody<DeleteAccountRequest>,
    ) -> Result<NoContentResult, Failure<DeleteMeErrors>> {
        let client = client(&state, req);
        state
            .accounts
            .delete_account(&auth.caller, text(body.0.password), &client)
            .await?;
        CookiePolicy::of(&state.settings).clear_session(req.cookie());
        Ok(NoContentResult::Done)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use poem_openapi::types::ToJSON;

    use super::*;

    /// `JsonBody` writes the serde form; clients and the spec expect the poem-openapi form.
    #[test]
    fn user_envelope_serde_form_is_the_openapi_form() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 16, 48, 35).unwrap()
            + chrono::Duration::microseconds(398_084);
        let envelope = UserEnvelope {
            user: UserResponse {
                id: Uuid::new_v4(),
                name: "Ada \"Countess\" Lovelace".into(),
                email: "ada@example.com".into(),
                role: "admin".into(),
                email_verified: true,
                mfa_enabled: false,
                created_at: at,
                updated_at: at + chrono::Duration::days(1),
            },
        };
        let serde_form = serde_json::to_value(&envelope).unwrap();
        assert_eq!(Some(serde_form.clone()), envelope.to_json());
        assert_eq!(
            serde_form["user"]["created_at"],
            "2026-12-02T16:48:35.398084+00:00"
        );
    }
}
