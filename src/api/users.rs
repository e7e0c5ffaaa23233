//! `/api/v1/users/me`: the signed-in user's own account.

use chrono::{DateTime, Utc};
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use uuid::Uuid;

use super::{
    ApiTags,
    request::{Text, text},
    validate::Validator,
};
use crate::{
    auth::guard::Authenticated,
    db::{entities::user, users},
    error::ApiError,
    state::AppState,
};

/// A user as clients see it. Never carries the password hash.
#[derive(Debug, Clone, Object)]
pub struct UserResponse {
    pub id: Uuid,
    pub name: String,
    /// Trimmed and lower-cased.
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<user::Model> for UserResponse {
    fn from(user: user::Model) -> Self {
        Self {
            id: user.id,
            name: user.name,
            email: user.email,
            role: user.role,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// `{"user": UserResponse}`.
#[derive(Debug, Clone, Object)]
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

#[derive(ApiResponse)]
pub enum UserResult {
    /// The user.
    #[oai(status = 200)]
    Ok(Json<UserEnvelope>),
}

pub struct UsersApi;

#[OpenApi(prefix_path = "/api/v1/users", tag = "ApiTags::Users")]
impl UsersApi {
    /// The signed-in user.
    #[oai(path = "/me", method = "get", operation_id = "get_me")]
    async fn get_me(&self, auth: Authenticated) -> Result<UserResult, ApiError> {
        Ok(UserResult::Ok(Json(auth.user.into())))
    }

    /// Change the signed-in user's name.
    #[oai(path = "/me", method = "patch", operation_id = "update_me")]
    async fn update_me(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Authenticated,
        body: Json<UpdateMeRequest>,
    ) -> Result<UserResult, ApiError> {
        let mut v = Validator::new();
        let name = v.name("name", text(body.0.name));
        let name = v.finish(name)?;
        let user = users::update_name(&state.db, auth.user, name).await?;
        Ok(UserResult::Ok(Json(user.into())))
    }
}
