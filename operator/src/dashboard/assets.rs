//! The browser assets, embedded in the binary: an air-gapped site needs
//! nothing but the operator.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

const HTMX: &[u8] = include_bytes!("assets/htmx.min.js");
const HTMX_SSE: &[u8] = include_bytes!("assets/htmx-ext-sse.min.js");
const CSS: &[u8] = include_bytes!("assets/dashboard.css");
const JS: &[u8] = include_bytes!("assets/dashboard.js");

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx-ext-sse.min.js" => (HTMX_SSE, "text/javascript; charset=utf-8"),
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "public, max-age=300")], body).into_response()
}
