//! WATCH: a chunked stream of events, one JSON object per line.
//!
//! A watch from resourceVersion R replays every event after R still in the
//! history, then follows new ones. From "0" or no resourceVersion it first
//! sends the current objects as ADDED. Selectors are applied the way the
//! real server's watch cache does: an object that starts matching is
//! ADDED, one that stops matching is DELETED (with its last matching
//! content and the event's resourceVersion). A watch from a compacted
//! resourceVersion gets one in-stream ERROR (410 Expired) and ends.
use std::{
    io,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    Shared,
    http::{Conn, Request},
    routes::{filter, parse_rv, respond_error, wait_fresh},
    selector::Filter,
    store::{ApiError, Event, EventType, Kind, Store},
};

/// Without `timeoutSeconds` the real server picks 30 to 60 minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// The longest a stream sleeps before looking again (changes and
/// shutdown wake it sooner).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Serve a WATCH on `kind` (in `ns`, or only object `name`).
pub(super) fn serve(
    shared: &Shared,
    conn: &mut Conn,
    req: &Request,
    kind: Kind,
    ns: Option<String>,
    name: Option<&str>,
) -> io::Result<()> {
    // Bad parameters and future resourceVersions fail before the stream
    // starts, with an HTTP status; a compacted resourceVersion fails inside
    // it, as the real server does.
    let (mut watch, first) = match Watch::start(shared, req, kind, ns, name) {
        Ok(started) => started,
        Err(e) => return respond_error(conn, &e),
    };
    conn.start_stream()?;
    conn.send_lines(&first.lines)?;
    let mut end = first.end;
    while !end {
        let batch = watch.next_batch(shared);
        conn.send_lines(&batch.lines)?;
        end = batch.end;
    }
    conn.end_stream()
}

/// What to send next, and whether the stream ends after it.
struct Batch {
    lines: Vec<Value>,
    end: bool,
}

struct Watch {
    kind: Kind,
    filter: Filter,
    /// Every event up to here has been sent (or filtered out).
    cursor: u64,
    /// The store's epoch when the watch started: a simulated restart ends it.
    epoch: u64,
    deadline: Instant,
    /// When the next BOOKMARK is due, if the client allows them.
    next_bookmark: Option<Instant>,
}

impl Watch {
    /// Check the parameters and work out where the stream starts; the first
    /// batch has the initial ADDED events, or the 410 ERROR.
    fn start(
        shared: &Shared,
        req: &Request,
        kind: Kind,
        ns: Option<String>,
        name: Option<&str>,
    ) -> Result<(Watch, Batch), ApiError> {
        let filter = filter(req, ns, name)?;
        let timeout = match req.param("timeoutSeconds") {
            None | Some("") | Some("0") => DEFAULT_TIMEOUT,
            Some(s) => Duration::from_secs(
                s.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
            ),
        };
        let bookmarks = req.flag("allowWatchBookmarks");
        let rv = parse_rv(req)?.filter(|rv| *rv > 0);
        // Initial events: asked for (the streaming list), or implied by
        // watching from "0" or from nowhere.
        let initial = match req.param("sendInitialEvents") {
            Some("true" | "1") => {
                if !bookmarks || req.param("resourceVersionMatch") != Some("NotOlderThan") {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "sendInitialEvents requires allowWatchBookmarks=true and \
                         resourceVersionMatch=NotOlderThan",
                    ));
                }
                Some(true)
            }
            Some("false" | "0") => None,
            _ => rv.is_none().then_some(false),
        };

        let store = shared.lock();
        let store = match rv {
            Some(rv) => wait_fresh(shared, store, rv)?,
            None => store,
        };
        let now = Instant::now();
        let mut watch = Watch {
            kind,
            filter,
            cursor: rv.unwrap_or(store.resource_version()),
            epoch: store.epoch(),
            deadline: now + timeout,
            next_bookmark: bookmarks.then_some(now + BOOKMARK_EVERY),
        };
        let first = match initial {
            Some(end_bookmark) => {
                watch.cursor = store.resource_version();
                let mut lines = watch.current_objects(&store);
                if end_bookmark {
                    lines.push(bookmark(kind, watch.cursor, true));
                }
                Batch { lines, end: false }
            }
            None if watch.cursor < store.compacted() => Batch {
                lines: vec![error_event(&ApiError::too_old(
                    watch.cursor,
                    store.compacted(),
                ))],
                end: true,
            },
            None => Batch {
                lines: Vec::new(),
                end: false,
            },
        };
        Ok((watch, first))
    }

    /// ADDED for every object that matches now.
    fn current_objects(&self, store: &Store) -> Vec<Value> {
        store
            .snapshot(self.kind, store.resource_version())
            .unwrap_or_default()
            .into_values()
            .filter(|o| self.filter.matches(o))
            .map(|o| json!({"type": "ADDED", "object": o}))
            .collect()
    }

    /// Block until there is something to send or the stream must end.
    fn next_batch(&mut self, shared: &Shared) -> Batch {
        let mut store = shared.lock();
        loop {
            if let Some(batch) = self.poll(&store, shared.is_shut_down()) {
                return batch;
            }
            let now = Instant::now();
            let wake = self
                .next_bookmark
                .map_or(self.deadline, |b| b.min(self.deadline));
            let sleep = wake.saturating_duration_since(now).min(MAX_SLEEP);
            store = shared
                .changed
                .wait_timeout(store, sleep)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The events since the last poll, any BOOKMARK due, and whether the
    /// stream ends; None when there is nothing to do yet.
    fn poll(&mut self, store: &Store, shutting_down: bool) -> Option<Batch> {
        if shutting_down || store.epoch() != self.epoch || self.cursor < store.compacted() {
            // The server went away (or the history this stream needs
            // did): end without a BOOKMARK, so the client resumes from
            // the last event it saw.
            return Some(Batch {
                lines: Vec::new(),
                end: true,
            });
        }
        let mut lines: Vec<Value> = store
            .events_after(self.cursor)
            .filter_map(|e| self.convert(e))
            .collect();
        self.cursor = store.resource_version();
        let now = Instant::now();
        let end = now >= self.deadline;
        if let Some(due) = self.next_bookmark
            && (end || now >= due)
        {
            // After the events, so the client never skips one.
            lines.push(bookmark(self.kind, self.cursor, false));
            self.next_bookmark = Some(now + BOOKMARK_EVERY);
        }
        (end || !lines.is_empty()).then_some(Batch { lines, end })
    }

    /// The event this watch sees for a write, if any (the watch cache's
    /// rule: compare the object before and after against the filter).
    fn convert(&self, e: &Event) -> Option<Value> {
        if e.kind != self.kind {
            return None;
        }
        let now_matches = e.typ != EventType::Deleted && self.filter.matches(&e.object);
        let prev = e.prev.as_ref().filter(|p| self.filter.matches(p));
        let (typ, object) = match (now_matches, prev) {
            (true, None) => ("ADDED", e.object.clone()),
            (true, Some(_)) => ("MODIFIED", e.object.clone()),
            (false, Some(prev)) => {
                let mut gone = prev.clone();
                gone["metadata"]["resourceVersion"] = e.rv.to_string().into();
                ("DELETED", gone)
            }
            (false, None) => return None,
        };
        Some(json!({"type": typ, "object": object}))
    }
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata},
    })
}

fn error_event(e: &ApiError) -> Value {
    json!({"type": "ERROR", "object": e.status()})
}
