//! What a dashboard request can fail with, and the status each one answers.

use crate::error::Error as FleetError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

#[derive(Debug, thiserror::Error)]
pub enum DashError {
    #[error("log in first")]
    Unauthenticated,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many failed logins; try again in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    Fleet(#[from] FleetError),
    #[error("dashboard: {0}")]
    Internal(String),
}

impl DashError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Fleet(e) => match e {
                FleetError::NoSuchBundle(_) | FleetError::NoSuchDevice(_) | FleetError::NoSuchRollout(_) => {
                    StatusCode::NOT_FOUND
                }
                FleetError::Invalid(_) | FleetError::NotABundle { .. } => StatusCode::BAD_REQUEST,
                FleetError::BundleInUse { .. } | FleetError::BundleExists(_) => StatusCode::CONFLICT,
                FleetError::Device(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            log::error!("dashboard: {self}");
        } else {
            log::debug!("dashboard: {status}: {self}");
        }
        // A fragment: htmx swaps it into the page's flash area (see
        // dashboard.js), a plain request shows it as the whole body. The
        // message may quote device data: maud escapes it.
        let body = html! {
            div.flash.flash-error role="alert" data-status=(status.as_u16()) {
                strong { (status.as_u16()) " " (status.canonical_reason().unwrap_or("error")) }
                " — " (self.to_string())
            }
        };
        (status, body).into_response()
    }
}

pub type DashResult<T> = std::result::Result<T, DashError>;
