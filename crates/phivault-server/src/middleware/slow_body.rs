//! A deadline on reading a request body: a client that sends its head and then trickles the
//! body (or nothing) would otherwise hold a handler, and the memory it buffers, for as long
//! as it likes. The deadline starts when the head has been read and covers the whole body.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use tokio::time::Instant;

use crate::{ApiError, AppState};

/// The error a body stream yields once its deadline has passed.
#[derive(Debug)]
struct BodyDeadlinePassed {
    seconds: u64,
}

impl std::fmt::Display for BodyDeadlinePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.seconds
        )
    }
}

impl std::error::Error for BodyDeadlinePassed {}

/// Replaces the request body with one that fails once `body_read_timeout` has passed.
pub(crate) async fn body_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = state.body_read_timeout;
    let deadline = Instant::now() + timeout;
    let seconds = timeout.as_secs();
    let (parts, body) = request.into_parts();
    let stream = body.into_data_stream();
    let timed = futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::BoxError::from(BodyDeadlinePassed { seconds })),
                None,
            )),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(timed)))
        .await
}

/// The 408 answer when a body read failed because its deadline passed.
pub(crate) fn timed_out(error: axum::Error) -> Option<ApiError> {
    let inner = error.into_inner();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
    while let Some(e) = current {
        if let Some(passed) = e.downcast_ref::<BodyDeadlinePassed>() {
            return Some(ApiError::BodyTimeout {
                seconds: passed.seconds,
            });
        }
        current = e.source();
    }
    None
}
