//! `/health/live` and `/health/ready`: probes for orchestrators and load balancers.

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::ApiTags;
use crate::{
    error::{ApiError, ErrorCode, FieldError},
    state::AppState,
};

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
    async fn ready(&self, state: poem::web::Data<&AppState>) -> Result<HealthResult, ApiError> {
        // Both connections to the database: SeaORM's pool and the hot path's reads.
        let db = async { tokio::try_join!(state.db.ping(), state.reads.ping()) };
        let (db, store) = tokio::join!(db, state.sessions.ping());
        let mut down = Vec::new();
        if let Err(err) = db {
            tracing::warn!(error = %err, "readiness: database down");
            down.push(FieldError {
                field: "database".into(),
                issue: "not answering".into(),
            });
        }
        if let Err(err) = store {
            tracing::warn!(error = %err, "readiness: session store down");
            down.push(FieldError {
                field: "session_store".into(),
                issue: "not answering".into(),
            });
        }
        if down.is_empty() {
            return Ok(ok());
        }
        let names: Vec<&str> = down.iter().map(|d| d.field.as_str()).collect();
        Err(ApiError {
            details: down.clone(),
            ..ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("not ready: {} down", names.join(" and ")),
            )
        })
    }
}
