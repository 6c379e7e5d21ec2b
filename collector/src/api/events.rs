//! `GET /api/v1/events`: the live stream dashboards listen to (server-sent
//! events). See [`crate::live`] for what is sent and how often.

use super::AppState;
use crate::live::Frame;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Comments on an idle stream, so proxies and browsers keep it open and a
/// dead peer is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream is authenticated when it opens; it ends after this long, and the
/// browser's EventSource reconnects at once, through the login check again.
/// So a session that ended (logout, password change, expiry) stops
/// receiving within this time.
const MAX_LIFE: Duration = Duration::from_secs(300);

pub async fn events(
    State(st): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (rx, closed) = st.live.subscribe();
    let hello = serde_json::json!({
        "server_time": jiff::Timestamp::now().to_string(),
        "time_zone": st.time_zone,
    });
    // Reconnect quickly when a stream ends (see MAX_LIFE).
    let hello = Event::default()
        .event("hello")
        .retry(Duration::from_secs(1))
        .data(hello.to_string());
    let until = tokio::time::Instant::now() + MAX_LIFE;
    let frames = stream::unfold((rx, closed), move |(mut rx, mut closed)| async move {
        let event = tokio::select! {
            () = tokio::time::sleep_until(until) => return None,
            r = rx.recv() => match r {
                Ok(f) => event(&f),
                // Fell behind: the page refetches its snapshot instead of
                // showing a gap.
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(RecvError::Closed) => return None,
            },
            _ = closed.wait_for(|c| *c) => return None,
        };
        Some((Ok(event), (rx, closed)))
    });
    Sse::new(stream::once(async { Ok(hello) }).chain(frames))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn event(f: &Frame) -> Event {
    Event::default().event(f.event()).data(f.data())
}
