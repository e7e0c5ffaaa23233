//! The second factor's endpoints (API.md section 9): TOTP enrollment and removal, recovery
//! codes, the login's second step, and the admin reset.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use serde_json::json;
use uuid::Uuid;

use super::{
    ApiTags,
    auth::TokenResult,
    error::{Failure, error_set},
    guard::{Admin, Authenticated, RequireRole},
    json_body::JsonBody,
    request::{Text, client, text},
    users::NoContentResult,
};
use crate::state::AppState;

error_set!(
    /// What starting an enrollment can answer.
    EnrollErrors: [BODY, GUARD, SERVER], CsrfRejected, MfaAlreadyEnabled, RateLimited, Busy
);
error_set!(
    /// What confirming an enrollment can answer.
    ConfirmErrors: [BODY, GUARD, SERVER], CsrfRejected, MfaNotEnabled
);
error_set!(
    /// What changing an enabled second factor can answer.
    ChangeErrors: [BODY, GUARD, SERVER], CsrfRejected, MfaNotEnabled, RateLimited, Busy
);
error_set!(
    /// What the login's second step can answer.
    SecondStepErrors: [BODY, SERVER], MfaInvalid
);
error_set!(
    /// What an admin's reset can answer.
    ResetErrors: [GUARD, SERVER], MalformedRequest, PayloadTooLarge, CsrfRejected, Forbidden,
    NotFound
);

/// The account's password.
#[derive(Object)]
pub struct PasswordRequest {
    /// Required.
    pub password: Option<Text>,
}

/// A code from the authenticator app.
#[derive(Object)]
pub struct CodeRequest {
    /// Required: the 6-digit code.
    pub code: Option<Text>,
}

/// The password and a second-factor code.
#[derive(Object)]
pub struct PasswordAndCodeRequest {
    /// Required.
    pub password: Option<Text>,
    /// Required: a 6-digit TOTP code, or one of the recovery codes (it is spent).
    pub code: Option<Text>,
}

/// The second step of a login: the `mfa_token` and one code.
#[derive(Object)]
pub struct SecondStepRequest {
    /// Required: from the login's 202 answer.
    pub mfa_token: Option<Text>,
    /// A 6-digit TOTP code (or give `recovery_code`).
    pub code: Option<Text>,
    /// One of the recovery codes, each good once (or give `code`).
    pub recovery_code: Option<Text>,
}

/// A pending TOTP enrollment.
#[derive(Debug, Clone, Object)]
pub struct TotpEnrollment {
    /// The secret in base32, to type into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/...`: what the QR code holds.
    pub otpauth_uri: String,
    /// The `otpauth_uri` as a QR code, an SVG document.
    pub qr_svg: String,
}

/// Recovery codes: each logs in once in place of a TOTP code. Shown only now.
#[derive(Debug, Clone, Object)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

#[derive(ApiResponse)]
pub enum EnrollResult {
    /// Scan the QR code (or type the secret), then confirm with a code.
    #[oai(status = 200)]
    Ok(Json<TotpEnrollment>),
}

#[derive(ApiResponse)]
pub enum CodesResult {
    /// The second factor is on; keep these codes somewhere safe.
    #[oai(status = 200)]
    Ok(Json<RecoveryCodes>),
}

fn codes(recovery_codes: Vec<String>) -> CodesResult {
    CodesResult::Ok(Json(RecoveryCodes { recovery_codes }))
}

pub struct MfaApi;

#[OpenApi(tag = "ApiTags::Users")]
impl MfaApi {
    /// Start TOTP enrollment: a new secret, pending until confirmed. Needs the password.
    ///
    /// 409 `mfa_already_enabled` if a second factor is on (disable it first). A wrong password
    /// is 422 `validation_failed`, limited and counted as for a password change.
    #[oai(
        path = "/api/v1/users/me/mfa/totp",
        method = "post",
        operation_id = "enroll_totp"
    )]
    async fn enroll(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<PasswordRequest>,
    ) -> Result<EnrollResult, Failure<EnrollErrors>> {
        let client = client(&state, req);
        let password = text(body.0.password);
        let e = state
            .accounts
            .enroll_totp(&auth.caller, password, &client)
            .await?;
        Ok(EnrollResult::Ok(Json(TotpEnrollment {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
            qr_svg: e.qr_svg,
        })))
    }

    /// Confirm TOTP enrollment with a first code: the second factor is on from now, and the
    /// answer holds 10 recovery codes (shown once).
    ///
    /// A wrong code is 422 `validation_failed`; no pending enrollment, 409 `mfa_not_enabled`.
    #[oai(
        path = "/api/v1/users/me/mfa/totp/confirm",
        method = "post",
        operation_id = "confirm_totp"
    )]
    async fn confirm(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<CodeRequest>,
    ) -> Result<CodesResult, Failure<ConfirmErrors>> {
        let client = client(&state, req);
        let code = text(body.0.code);
        let new = state
            .accounts
            .confirm_totp(&auth.caller, code, &client)
            .await?;
        Ok(codes(new))
    }

    /// New recovery codes; the old ones stop working. Needs the password and a code.
    #[oai(
        path = "/api/v1/users/me/mfa/recovery-codes",
        method = "post",
        operation_id = "regenerate_recovery_codes"
    )]
    async fn regenerate(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<PasswordAndCodeRequest>,
    ) -> Result<CodesResult, Failure<ChangeErrors>> {
        let client = client(&state, req);
        let (password, code) = (text(body.0.password), text(body.0.code));
        let accounts = &state.accounts;
        let new = accounts.regenerate_recovery_codes(&auth.caller, password, code, &client);
        Ok(codes(new.await?))
    }

    /// Turn the second factor off. Needs the password and a code (TOTP or recovery).
    #[oai(
        path = "/api/v1/users/me/mfa/totp",
        method = "delete",
        operation_id = "disable_totp"
    )]
    async fn disable(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<PasswordAndCodeRequest>,
    ) -> Result<NoContentResult, Failure<ChangeErrors>> {
        let client = client(&state, req);
        let (password, code) = (text(body.0.password), text(body.0.code));
        let accounts = &state.accounts;
        accounts
            .disable_totp(&auth.caller, password, code, &client)
            .await?;
        Ok(NoContentResult::Done)
    }

    /// Finish a login that answered 202: the `mfa_token` and a TOTP code or a recovery code.
    ///
    /// Answers exactly as a login does (token pair, cookies, session); the tokens' `amr` is
    /// `["pwd", "otp"]`. A wrong or replayed code and a dead `mfa_token` are 401
    /// `mfa_invalid`; wrong codes count toward the account's login backoff.
    #[oai(
        path = "/api/v1/auth/mfa",
        method = "post",
        operation_id = "login_mfa",
        tag = "ApiTags::Auth"
    )]
    async fn second_step(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<SecondStepRequest>,
    ) -> Result<TokenResult, Failure<SecondStepErrors>> {
        let body = body.0;
        let (token, code) = (text(body.mfa_token), text(body.code));
        let recovery = text(body.recovery_code);
        let client = client(&state, req);
        let signed_in = state
            .accounts
            .finish_login(token, code, recovery, &client)
            .await?;
        Ok(TokenResult::signed_in(&state, req, signed_in))
    }

    /// Remove a user's second factor (a lost device). Every session of the user ends.
    #[oai(
        path = "/api/v1/admin/users/:id/reset-mfa",
        method = "post",
        operation_id = "admin_reset_mfa",
        tag = "ApiTags::Admin"
    )]
    async fn reset(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        admin: RequireRole<Admin>,
        id: Path<Uuid>,
    ) -> Result<NoContentResult, Failure<ResetErrors>> {
        let client = client(&state, req);
        let by = json!(admin.auth.caller.user.id);
        state.accounts.reset_mfa(id.0, by, &client).await?;
        Ok(NoContentResult::Done)
    }
}
