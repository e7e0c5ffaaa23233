//! `/health/live` and `/health/ready`: probes for orchestrators and load balancers.

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{
    ApiTags,
    error::{ApiError, ErrorCode, Failure, FieldError, error_set},
};
use crate::state::AppState;

error_set!(
    /// What readiness can answer besides 200.
    ReadyErrors: [], ServiceUnavailable
);

/// Probe result.
#[derive(Debug, Clone, Object)]
pub struct HealthStatus {
    /// `ok`.
    pub status: String,
}

#[derive(ApiResponse)]
pub enum HealthResult {
    /// Healthy.
    #[oai(status = 200)]
    Ok(Json<HealthStatus>),
}

fn ok() -> HealthResult {
    HealthResult::Ok(Json(HealthStatus {
        status: "ok".into(),
    }))
}

pub struct HealthApi;

#[OpenApi(prefix_path = "/health", tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: 200 while the process runs.
    #[oai(path = "/live", method = "get", operation_id = "health_live")]
    async fn live(&self) -> HealthResult {
        ok()
    }

    /// Readiness: 200 when the database and the session store answer; otherwise 503
    /// `service_unavailable` with `Retry-After`, naming what is down in `details`.
    #[oai(path = "/ready", method = "get", operation_id = "health_ready")]
    async fn ready(
        &self,
        state: poem::web::Data<&AppState>,
    ) -> Result<HealthResult, Failure<ReadyErrors>> {
        let down = state.accounts.dependencies_down().await;
        if down.is_empty() {
            return Ok(ok());
        }
        let details = down
            .iter()
            .map(|name| FieldError {
                field: (*name).into(),
                issue: "not answering".into(),
            })
            .collect();
        let message = format!("not ready: {} down", down.join(" and "));
        Err(ApiError {
            details,
            ..ApiError::new(ErrorCode::ServiceUnavailable, message)
        }
        .into())
    }
}
