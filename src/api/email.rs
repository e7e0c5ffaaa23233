//! The email flows' endpoints (API.md section 8): links to prove an address and to reset a
//! password, spending them, and changing the address.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{
    ApiTags,
    error::{Failure, error_set},
    guard::Authenticated,
    json_body::JsonBody,
    request::{Text, client, text},
    users::{UserEnvelope, UserResult},
};
use crate::{accounts::LinkRequest, state::AppState};

error_set!(
    /// What asking for a link can answer.
    LinkRequestErrors: [BODY, SERVER], RateLimited, NotFound
);
error_set!(
    /// What spending a verification link can answer.
    VerifyErrors: [BODY, SERVER], LinkInvalid, NotFound
);
error_set!(
    /// What spending a reset link can answer.
    ResetErrors: [BODY, SERVER], LinkInvalid, NotFound, Busy
);
error_set!(
    /// What asking to change the address can answer.
    ChangeEmailErrors: [BODY, GUARD, SERVER], CsrfRejected, EmailTaken, RateLimited, Busy,
    NotFound
);
error_set!(
    /// What confirming a change of address can answer.
    ConfirmEmailErrors: [BODY, SERVER], LinkInvalid, EmailTaken, NotFound
);

/// The address to mail a link to.
#[derive(Object)]
pub struct EmailRequest {
    /// Required: trimmed and lower-cased.
    pub email: Option<Text>,
}

/// The token of an emailed link (its `token` query parameter).
#[derive(Object)]
pub struct TokenRequest {
    /// Required.
    pub token: Option<Text>,
}

/// A new password, with the token of a reset link.
#[derive(Object)]
pub struct ResetPasswordRequest {
    /// Required: the reset link's `token`.
    pub token: Option<Text>,
    /// Required: 8 to 128 characters (Unicode scalar values), used exactly as given.
    pub new_password: Option<Text>,
}

/// A new address for the signed-in user, confirmed with the password.
#[derive(Object)]
pub struct ChangeEmailRequest {
    /// Required: trimmed and lower-cased, then checked.
    pub new_email: Option<Text>,
    /// Required: the account's password.
    pub password: Option<Text>,
}

#[derive(ApiResponse)]
pub enum AcceptedResult {
    /// Accepted. Any mail is queued and sent shortly.
    #[oai(status = 202)]
    Accepted,
}

#[derive(ApiResponse)]
pub enum ResetResult {
    /// The password is changed, every session revoked, and the address counts as verified.
    #[oai(status = 204)]
    Done,
}

fn user(user: crate::db::entities::user::Model) -> UserResult {
    UserResult::Ok(JsonBody(UserEnvelope::from(user)))
}

pub struct EmailApi;

#[OpenApi(tag = "ApiTags::Auth")]
impl EmailApi {
    /// Mail a link that verifies the address, if an unverified account has it.
    ///
    /// 202 whether or not an account has the address (nothing tells them apart). Limited per
    /// address (`RATE_LIMIT_EMAIL_PER_ADDRESS`) and per client IP (`RATE_LIMIT_EMAIL_PER_IP`).
    #[oai(
        path = "/api/v1/auth/verify-email/request",
        method = "post",
        operation_id = "request_email_verification"
    )]
    async fn request_verification(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<EmailRequest>,
    ) -> Result<AcceptedResult, Failure<LinkRequestErrors>> {
        let (email, client) = (text(body.0.email), client(&state, req));
        let request = LinkRequest::VerifyEmail;
        state.accounts.request_link(request, email, &client).await?;
        Ok(AcceptedResult::Accepted)
    }

    /// Verify the address with the token of a verification link.
    ///
    /// Unknown, used and expired tokens are 400 `link_invalid`.
    #[oai(
        path = "/api/v1/auth/verify-email",
        method = "post",
        operation_id = "verify_email"
    )]
    async fn verify(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<TokenRequest>,
    ) -> Result<UserResult, Failure<VerifyErrors>> {
        let client = client(&state, req);
        let verified = state
            .accounts
            .verify_email(text(body.0.token), &client)
            .await?;
        Ok(user(verified))
    }

    /// Mail a password-reset link, if an enabled account has the address.
    ///
    /// 202 whether or not an account has the address. Limited as the verification request.
    #[oai(
        path = "/api/v1/auth/password-reset/request",
        method = "post",
        operation_id = "request_password_reset"
    )]
    async fn request_reset(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<EmailRequest>,
    ) -> Result<AcceptedResult, Failure<LinkRequestErrors>> {
        let (email, client) = (text(body.0.email), client(&state, req));
        let request = LinkRequest::ResetPassword;
        state.accounts.request_link(request, email, &client).await?;
        Ok(AcceptedResult::Accepted)
    }

    /// Set a new password with the token of a reset link.
    ///
    /// Every session of the user is revoked and the address counts as verified. A second
    /// factor still applies at the next login. Unknown, used and expired tokens are 400
    /// `link_invalid`.
    #[oai(
        path = "/api/v1/auth/password-reset",
        method = "post",
        operation_id = "reset_password"
    )]
    async fn reset(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<ResetPasswordRequest>,
    ) -> Result<ResetResult, Failure<ResetErrors>> {
        let (token, password) = (text(body.0.token), text(body.0.new_password));
        let client = client(&state, req);
        state
            .accounts
            .reset_password(token, password, &client)
            .await?;
        Ok(ResetResult::Done)
    }

    /// Ask to change the signed-in user's address.
    ///
    /// A confirmation link goes to the new address and a notice to the old one; nothing changes
    /// until the link is used. A wrong `password` is 422 and counts toward the account's login
    /// backoff; an address another account has is 409 `email_taken`.
    #[oai(
        path = "/api/v1/users/me/email",
        method = "patch",
        operation_id = "change_email",
        tag = "ApiTags::Users"
    )]
    async fn change_email(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<ChangeEmailRequest>,
    ) -> Result<AcceptedResult, Failure<ChangeEmailErrors>> {
        let (new_email, password) = (text(body.0.new_email), text(body.0.password));
        let client = client(&state, req);
        state
            .accounts
            .request_email_change(&auth.caller, new_email, password, &client)
            .await?;
        Ok(AcceptedResult::Accepted)
    }

    /// Make the address of a change-of-address link the account's, verified.
    ///
    /// 409 `email_taken` if another account took the address meanwhile; unknown, used and
    /// expired tokens are 400 `link_invalid`.
    #[oai(
        path = "/api/v1/auth/confirm-email",
        method = "post",
        operation_id = "confirm_email_change"
    )]
    async fn confirm(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<TokenRequest>,
    ) -> Result<UserResult, Failure<ConfirmEmailErrors>> {
        let client = client(&state, req);
        let changed = state
            .accounts
            .confirm_email_change(text(body.0.token), &client)
            .await?;
        Ok(user(changed))
    }
}
