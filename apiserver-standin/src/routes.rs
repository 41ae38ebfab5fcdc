//! Paths to handlers: GET (one object, LIST, or WATCH), POST, PUT, PATCH
//! (JSON merge patch) and DELETE, answering errors with a `Status`.
use std::{
    io,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::{
    Shared,
    http::{Conn, Request},
    selector::{FieldSelector, Filter, LabelSelector},
    store::{ApiError, Kind, Store},
    watch,
};

/// How long a request for a resourceVersion newer than the store's waits
/// for it before failing, as the real server's watch cache does.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// What a path names.
#[derive(Debug, PartialEq)]
enum Target {
    Collection {
        kind: Kind,
        ns: Option<String>,
    },
    Object {
        kind: Kind,
        ns: Option<String>,
        name: String,
    },
    Text(&'static str),
    Version,
}

/// Map a path to a target. `/api/v1/watch/...` (the deprecated watch
/// prefix) is the same target with `watch` implied (second value).
fn route(path: &str) -> Option<(Target, bool)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segs.as_slice() {
        ["healthz" | "livez" | "readyz"] => return Some((Target::Text("ok"), false)),
        ["version"] => return Some((Target::Version, false)),
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        ["apis", "networking.k8s.io", "v1", rest @ ..] => ("networking.k8s.io/v1", rest),
        _ => return None,
    };
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let kind_of = |plural: &str| {
        Kind::ALL.into_iter().find(|k| {
            k.plural() == plural
                && k.api_version() == group_version
                && (ns.is_none() || k.namespaced())
        })
    };
    let target = match rest {
        [plural] => Target::Collection {
            kind: kind_of(plural)?,
            ns,
        },
        [plural, name] => {
            let kind = kind_of(plural)?;
            if kind.namespaced() && ns.is_none() {
                return None;
            }
            Target::Object {
                kind,
                ns,
                name: name.to_string(),
            }
        }
        _ => return None,
    };
    Some((target, watch))
}

/// Answer one request. An `Err` means the connection is unusable.
pub(super) fn handle(shared: &Shared, conn: &mut Conn, req: &Request) -> io::Result<()> {
    let Some((target, watch_prefix)) = route(&req.path) else {
        return respond_error(conn, &not_found());
    };
    // A resource the server was told not to serve is missing as on an
    // older server: the same 404 as an unknown path.
    if let Target::Collection { kind, .. } | Target::Object { kind, .. } = &target
        && shared.not_served.contains(kind)
    {
        return respond_error(conn, &not_found());
    }
    let watching = req.method == "GET" && (watch_prefix || req.flag("watch"));
    match target {
        Target::Text(text) => conn.respond(200, "text/plain; charset=utf-8", text.as_bytes()),
        Target::Collection { kind, ns } if watching => {
            watch::serve(shared, conn, req, kind, ns, None)
        }
        Target::Object { kind, ns, name } if watching => {
            watch::serve(shared, conn, req, kind, ns, Some(&name))
        }
        target => match answer(shared, req, target) {
            Ok((code, body)) => conn.respond_json(code, &body),
            Err(e) => respond_error(conn, &e),
        },
    }
}

/// The (code, body) of a request that is not a WATCH.
fn answer(shared: &Shared, req: &Request, target: Target) -> Result<(u16, Value), ApiError> {
    let method = req.method.as_str();
    if method != "GET" && req.param("dryRun").is_some() {
        // Refused loudly rather than written for real.
        return Err(ApiError::bad_request(
            "dryRun is not supported by the stand-in",
        ));
    }
    match target {
        Target::Version => Ok((200, version())),
        Target::Collection { kind, ns } => match method {
            "GET" => list(shared, req, kind, ns).map(|l| (200, l)),
            // Creating needs the namespace in the path.
            "POST" if ns.is_some() || !kind.namespaced() => {
                let obj = body_object(req, kind)?;
                shared
                    .mutate(|s| s.create(obj, ns.as_deref()))
                    .map(|o| (201, o))
            }
            _ => Err(method_not_allowed()),
        },
        Target::Object { kind, ns, name } => {
            let ns = ns.as_deref();
            match method {
                "GET" => shared.lock().get(kind, ns, &name).map(|o| (200, o)),
                "PUT" => {
                    let obj = body_object(req, kind)?;
                    shared
                        .mutate(|s| s.update(obj, Some((ns, &name))))
                        .map(|(o, created)| (if created { 201 } else { 200 }, o))
                }
                "PATCH" => patch(shared, req, kind, ns, &name).map(|o| (200, o)),
                "DELETE" => shared
                    .mutate(|s| s.delete(kind, ns, &name))
                    .map(|o| (200, o)),
                _ => Err(method_not_allowed()),
            }
        }
        Target::Text(_) => Err(method_not_allowed()),
    }
}

pub(super) fn respond_error(conn: &mut Conn, e: &ApiError) -> io::Result<()> {
    conn.respond_json(e.code, &e.status())
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-ferry-standin",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// The request body as an object of `kind`: a missing kind and apiVersion
/// default to the path's, others are refused.
fn body_object(req: &Request, kind: Kind) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    for (field, want) in [("kind", kind.kind()), ("apiVersion", kind.api_version())] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.into(), want.into());
            }
            Some(got) if got != want => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({got}) does not match the expected {field} ({want})"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(obj)
}

fn patch(
    shared: &Shared,
    req: &Request,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/merge-patch+json") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - the stand-in \
                 accepts only application/merge-patch+json"
            ),
        ));
    }
    let patch: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
    shared.mutate(|s| s.merge_patch(kind, ns, name, &patch))
}

/// The selectors of a LIST or WATCH, plus the path's namespace.
pub(super) fn filter(
    req: &Request,
    ns: Option<String>,
    name: Option<&str>,
) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let mut fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    if let Some(name) = name {
        fields = fields.with_name(name);
    }
    Ok(Filter {
        namespace: ns,
        labels,
        fields,
    })
}

/// Parse a resourceVersion parameter: None when absent or empty.
pub(super) fn parse_rv(req: &Request) -> Result<Option<u64>, ApiError> {
    match req.param("resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}"))),
    }
}

/// Wait (up to [`FRESHNESS_WAIT`]) until the store has reached `rv`; the
/// real server fails the same way when asked for a future version.
pub(super) fn wait_fresh<'a>(
    shared: &'a Shared,
    mut store: std::sync::MutexGuard<'a, Store>,
    rv: u64,
) -> Result<std::sync::MutexGuard<'a, Store>, ApiError> {
    let deadline = Instant::now() + FRESHNESS_WAIT;
    while store.resource_version() < rv {
        let now = Instant::now();
        if now >= deadline || shared.is_shut_down() {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!(
                    "Too large resource version: {rv}, current: {}",
                    store.resource_version()
                ),
            ));
        }
        store = shared
            .changed
            .wait_timeout(store, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    Ok(store)
}

/// Where a `continue` token resumes: the snapshot's resourceVersion and
/// the last key returned. Encoded like the real server's token (base64 of
/// JSON with "v", "rv" and "start" = the next key to read).
#[derive(Debug, PartialEq)]
struct Continue {
    rv: u64,
    after: String,
}

impl Continue {
    fn encode(&self) -> String {
        let start = format!("{}\u{0}", self.after);
        URL_SAFE_NO_PAD
            .encode(json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": start}).to_string())
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad("not base64"))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
        if v["v"] != "meta.k8s.io/v1" {
            return Err(bad(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let rv = v["rv"]
            .as_u64()
            .filter(|rv| *rv > 0)
            .ok_or_else(|| bad("bad rv"))?;
        let start = v["start"].as_str().ok_or_else(|| bad("no start"))?;
        let after = start
            .strip_suffix('\u{0}')
            .ok_or_else(|| bad("bad start"))?;
        Ok(Self {
            rv,
            after: after.to_string(),
        })
    }
}

/// LIST: the objects matching the selectors at one resourceVersion (the
/// current one, an exact one, or the snapshot a `continue` token names),
/// `limit` at a time.
fn list(shared: &Shared, req: &Request, kind: Kind, ns: Option<String>) -> Result<Value, ApiError> {
    let filter = filter(req, ns, None)?;
    let limit = match req.param("limit") {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {s:?}")))?,
        ),
    }
    .filter(|l| *l > 0);
    let cont = match req.param("continue") {
        None | Some("") => None,
        Some(t) => Some(Continue::decode(t)?),
    };
    let rv = parse_rv(req)?;
    let exact = match req.param("resourceVersionMatch") {
        None | Some("") | Some("NotOlderThan") => false,
        Some("Exact") => true,
        Some(m) => {
            return Err(ApiError::bad_request(format!(
                "unsupported resourceVersionMatch {m:?}"
            )));
        }
    };
    if cont.is_some() && rv.is_some_and(|rv| rv != 0) {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if exact && rv.is_none_or(|rv| rv == 0) {
        return Err(ApiError::bad_request(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\" or unset",
        ));
    }

    let store = shared.lock();
    let store = match rv {
        Some(rv) if rv > 0 => wait_fresh(shared, store, rv)?,
        _ => store,
    };
    let at = match (&cont, rv) {
        (Some(c), _) => c.rv,
        (None, Some(rv)) if exact => rv,
        _ => store.resource_version(),
    };
    let after = cont.map(|c| c.after);
    // The real server counts what is left only without selectors.
    let count_rest =
        filter.labels == LabelSelector::default() && filter.fields == FieldSelector::default();
    let Some((items, remaining)) = store.list_page(
        kind,
        at,
        after.as_deref(),
        limit.unwrap_or(usize::MAX),
        |obj| filter.matches(obj),
        count_rest,
    ) else {
        return Err(if after.is_some() {
            ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            )
        } else {
            ApiError::too_old(at, store.compacted())
        });
    };
    drop(store);

    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0
        && let Some((last, _)) = items.last()
    {
        metadata["continue"] = Continue {
            rv: at,
            after: last.clone(),
        }
        .encode()
        .into();
        if count_rest {
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    Ok(json!({
        "kind": kind.list_kind(),
        "apiVersion": kind.api_version(),
        "metadata": metadata,
        // Items in a real list have no kind or apiVersion (the list has
        // them); clients must not rely on them.
        "items": items.into_iter().map(|(_, o)| strip_type(o)).collect::<Vec<_>>(),
    }))
}

fn strip_type(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let svc = |ns: Option<&str>| Target::Collection {
            kind: Kind::Service,
            ns: ns.map(str::to_string),
        };
        assert_eq!(route("/api/v1/services"), Some((svc(None), false)));
        assert_eq!(
            route("/api/v1/namespaces/a/services"),
            Some((svc(Some("a")), false))
        );
        assert_eq!(
            route("/api/v1/watch/namespaces/a/services"),
            Some((svc(Some("a")), true))
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/x"),
            Some((
                Target::Object {
                    kind: Kind::EndpointSlice,
                    ns: Some("a".into()),
                    name: "x".into()
                },
                false
            ))
        );
        assert_eq!(
            route("/api/v1/nodes/n1"),
            Some((
                Target::Object {
                    kind: Kind::Node,
                    ns: None,
                    name: "n1".into()
                },
                false
            ))
        );
        assert_eq!(route("/api/v1/namespaces/a/nodes"), None);
        assert_eq!(route("/api/v1/services/x"), None);
        assert_eq!(route("/apis/discovery.k8s.io/v1/services"), None);
        assert_eq!(route("/api/v1/endpointslices"), None);
        assert_eq!(
            route("/apis/networking.k8s.io/v1/watch/servicecidrs"),
            Some((
                Target::Collection {
                    kind: Kind::ServiceCIDR,
                    ns: None
                },
                true
            ))
        );
        assert_eq!(
            route("/apis/networking.k8s.io/v1/namespaces/a/servicecidrs"),
            None
        );
    }

    #[test]
    fn continue_round_trip() {
        let c = Continue {
            rv: 42,
            after: "ns/a".into(),
        };
        assert_eq!(Continue::decode(&c.encode()).unwrap(), c);
        assert!(Continue::decode("garbage!").is_err());
    }
}
