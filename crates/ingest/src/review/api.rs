//! The review API's routes (docs/review.md, "The JSON API").
//!
//! Helpers answer `Result<_, Resp>`: the error is the answer already made (401, 403, ...),
//! returned once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use neoflix_format::Manifest;
use neoflix_format::review_api::{
    Answer, ConsentRequest, DownloadRequest, LoginAnswer, LoginRequest, Params, ParamsRequest,
    Question, RecordingAnswer, RecordingsAnswer, SessionAnswer, TeachingRequest, WithdrawRequest,
};
use neoflix_format::reviewer::Role;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::State;
use super::guard::{self, Route};
use crate::audit::{Action, AuditFilter, Event};
use crate::db::{Attempt, Db, DbError, Filter, Limit, Session, Summary, Upload, now_secs};
use crate::http::{Resp, error, json as json_resp};
use crate::lifecycle::{Cause, Consequence, Keeper, LifecycleError, Who};
use crate::ratelimit;

/// Most audit entries the page lists at once (newest first); filters reach older ones.
const MAX_AUDIT_LISTED: usize = 500;
/// Most entries one CSV export holds: some 30 MB, built whole in memory; a longer span is
/// exported in pieces (by dates) or with `audit --json` on the server.
const MAX_AUDIT_EXPORTED: usize = 100_000;

/// Who may watch recordings.
const WATCH: &[Role] = &[Role::Chair, Role::Reviewer];
/// Who may list recordings (the privacy officer for the retention report: times, rooms,
/// consent, dates; no video).
const LIST: &[Role] = &[Role::Chair, Role::Reviewer, Role::PrivacyOfficer];
/// Who decides consent, withdrawal and the teaching library.
const CHAIR: &[Role] = &[Role::Chair];
/// Who reads the audit log on the page.
const AUDIT: &[Role] = &[Role::PrivacyOfficer];

/// Largest JSON request body.
const MAX_BODY: usize = 4 * 1024;
/// A request body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

fn internal(e: impl std::fmt::Display) -> Resp {
    log::error!(error = crate::esc(&e.to_string()).as_str(); "review: database error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server's database failed; see its log",
    )
}

fn too_many(secs: i64) -> Resp {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed sign-ins: try again in {secs} s"),
    );
    r.headers_mut().insert(
        "retry-after",
        secs.max(1).to_string().parse().expect("digits"),
    );
    r
}

/// Runs `f` on the database off the runtime.
async fn db<T: Send + 'static>(
    st: &State,
    f: impl FnOnce(&Db) -> Result<T, DbError> + Send + 'static,
) -> Result<T, Resp> {
    let d = st.db.clone();
    match tokio::task::spawn_blocking(move || f(&d)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

/// Appends to the audit log; a failure to audit refuses what was to be audited.
async fn audit(st: &State, e: Event) -> Result<(), Resp> {
    db(st, move |d| d.append_audit(&e).map(|_| ())).await
}

fn event(
    actor: &str,
    action: Action,
    recording: String,
    client: &str,
    detail: serde_json::Value,
) -> Event {
    Event {
        actor: actor.to_string(),
        action,
        recording,
        client: client.to_string(),
        detail,
    }
}

/// Handles one request: routes it and adds the headers every answer carries.
pub async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
    peer: SocketAddr,
) -> Result<Resp, std::convert::Infallible> {
    let r = guard::route(req.method(), req.uri().path());
    let api = r.is_api();
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(200).collect();
    let resp = match dispatch(req, r, &st, peer).await {
        Ok(r) | Err(r) => r,
    };
    if resp.status().is_server_error() || resp.status() == StatusCode::FORBIDDEN {
        log::warn!(peer = peer.to_string().as_str(), status = resp.status().as_u16(); "review: {} {}", crate::esc(method.as_str()), crate::esc(&path));
    } else {
        log::debug!(peer = peer.to_string().as_str(), status = resp.status().as_u16(); "review: {} {}", crate::esc(method.as_str()), crate::esc(&path));
    }
    Ok(guard::secure(resp, api))
}

fn header<'r>(req: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn check_origin(req: &Request<Incoming>) -> Result<(), Resp> {
    if guard::origin_allowed(req.headers()) {
        Ok(())
    } else {
        Err(error(StatusCode::FORBIDDEN, "cross-origin request refused"))
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The request's live session, or 401.
async fn session(req: &Request<Incoming>, st: &State) -> Result<(String, Session), Resp> {
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "not signed in");
    let Some(token) = guard::cookie_token(header(req, "cookie")) else {
        return Err(unauthorized());
    };
    let h = token_hash(token);
    let (idle, max) = (st.idle_secs, st.max_secs);
    let hh = h.clone();
    match db(st, move |d| d.session(&hh, now_secs(), idle, max)).await? {
        Some(s) => Ok((h, s)),
        None => Err(unauthorized()),
    }
}

/// A session and its CSRF token and Origin: what every state-changing request needs.
async fn session_for_change(
    req: &Request<Incoming>,
    st: &State,
) -> Result<(String, Session), Resp> {
    check_origin(req)?;
    let s = session(req, st).await?;
    if !guard::csrf_ok(header(req, guard::CSRF_HEADER), &s.1.csrf) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "missing or wrong X-Neoflix-CSRF header",
        ));
    }
    Ok(s)
}

/// Most (session, request) pairs whose refusal is remembered as audited; past it the memory
/// starts again (and the next refusals are audited once more).
const MAX_FORBIDDEN_REMEMBERED: usize = 4096;

/// Refuses (403) a signed-in person none of whose roles is in `roles`. The first refusal of
/// each request per session is audited: a loop of refused requests cannot fill the log, which
/// never shrinks.
async fn allow(
    st: &State,
    (token, s): &(String, Session),
    roles: &[Role],
    what: &'static str,
    client: &str,
) -> Result<(), Resp> {
    if s.roles.iter().any(|r| roles.contains(r)) {
        return Ok(());
    }
    let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let first = {
        let mut seen = st.forbidden.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_FORBIDDEN_REMEMBERED {
            seen.clear();
        }
        seen.insert((token.clone(), what))
    };
    if first {
        audit(
            st,
            event(
                &s.reviewer,
                Action::Forbidden,
                String::new(),
                client,
                json!({ "asked": what, "roles": s.roles }),
            ),
        )
        .await?;
    }
    Err(error(
        StatusCode::FORBIDDEN,
        format!(
            "{what} needs the role {}: ask the chair, who enrols people with their roles",
            needed.join(" or ")
        ),
    ))
}

/// Whether the recording may be opened under its consent and the department's policy.
fn openable(s: &Summary, st: &State) -> Result<(), Resp> {
    if let Some(q) = s.consent.refused() {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "consent to {} this recording was refused: nobody may open it, and it is being deleted",
                if q == Question::Filmed {
                    "film"
                } else {
                    "review"
                }
            ),
        ));
    }
    if s.consent.review.answer == Answer::Pending && !st.keeping.consent.review_while_pending {
        return Err(error(
            StatusCode::FORBIDDEN,
            "consent to review this recording is pending, and the department's policy ([consent] review_while_pending = false) allows opening it only once granted",
        ));
    }
    Ok(())
}

/// Whether the person sees consent notes and form references: they are for who decides and
/// who audits.
fn sees_notes(s: &Session) -> bool {
    s.roles.contains(&Role::Chair) || s.roles.contains(&Role::PrivacyOfficer)
}

/// `s` without the consent notes and form references.
fn without_notes(mut s: Summary) -> Summary {
    for q in Question::ALL {
        let r = s.consent.get_mut(q);
        r.note.clear();
        r.form_ref.clear();
    }
    s
}

/// Fills in when `s` is deleted, as retention would see it now.
fn with_lifecycle(mut s: Summary, st: &State, now: std::time::SystemTime) -> Summary {
    if let Some(keep_days) = st.keeping.keep_days {
        let v = crate::retention::verdict(
            &s.received_utc,
            s.lifecycle.held.then_some(""),
            s.lifecycle.teaching_until_utc.as_deref(),
            s.consent.refused().is_some(),
            keep_days,
            now,
        );
        s.lifecycle.delete_after_utc = v.delete_after_utc();
    }
    s
}

async fn body_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes or cut short"),
            ));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

fn expires_utc(s: &Session, idle: i64, max: i64) -> String {
    let at = (s.last_seen + idle).min(s.created + max).max(0) as u64;
    neoflix_format::utc(std::time::UNIX_EPOCH + Duration::from_secs(at))
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

async fn dispatch(
    req: Request<Incoming>,
    r: Route,
    st: &Arc<State>,
    peer: SocketAddr,
) -> Result<Resp, Resp> {
    let client = super::client_of(peer);
    match r {
        Route::Page => Ok(Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(st.assets.index.clone()))
            .expect("valid response")),
        Route::Asset(name) => match st.assets.files.get(&name) {
            Some((bytes, ctype)) => Ok(Response::builder()
                .header("content-type", *ctype)
                .body(Full::new(bytes.clone()))
                .expect("valid response")),
            None => Err(error(StatusCode::NOT_FOUND, "no such asset")),
        },
        Route::NotFound => Err(error(StatusCode::NOT_FOUND, "not found")),
        Route::WrongMethod => Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
        )),
        Route::LoginParams => {
            check_origin(&req)?;
            let p: ParamsRequest = body_json(req).await?;
            let name = p.user;
            if neoflix_format::reviewer::ReviewerName::parse(&name).is_err() {
                return Err(error(StatusCode::BAD_REQUEST, "not a reviewer name"));
            }
            let n = name.clone();
            let known = db(st, move |d| d.reviewer(&n)).await?;
            let kdf = match known {
                Some(r) => r.file.kdf,
                None => guard::unknown_kdf(&st.secret, &name),
            };
            Ok(json_resp(StatusCode::OK, &Params { kdf }))
        }
        Route::Login => login(req, st, peer, &client).await,
        Route::Session => {
            let (_, s) = session(&req, st).await?;
            let expires_utc = expires_utc(&s, st.idle_secs, st.max_secs);
            Ok(json_resp(
                StatusCode::OK,
                &SessionAnswer {
                    user: s.reviewer,
                    roles: s.roles,
                    csrf: s.csrf,
                    expires_utc,
                },
            ))
        }
        Route::Logout => {
            let (h, s) = session_for_change(&req, st).await?;
            db(st, move |d| d.remove_session(&h)).await?;
            audit(
                st,
                event(
                    &s.reviewer,
                    Action::SignOut,
                    String::new(),
                    &client,
                    json!({}),
                ),
            )
            .await?;
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("set-cookie", guard::cleared_cookie())
                .body(Full::new(Bytes::new()))
                .expect("valid response"))
        }
        Route::Recordings => {
            let who = session(&req, st).await?;
            allow(st, &who, LIST, "listing recordings", &client).await?;
            let s = who.1;
            let f = filter(req.uri().query())?;
            let mut list = db(st, move |d| d.recordings(&f)).await?;
            let truncated = list.len() > crate::db::MAX_LISTED;
            list.truncate(crate::db::MAX_LISTED);
            let now = std::time::SystemTime::now();
            let notes = sees_notes(&s);
            Ok(json_resp(
                StatusCode::OK,
                &RecordingsAnswer {
                    recordings: list
                        .into_iter()
                        .map(|r| with_lifecycle(r, st, now))
                        .map(|r| if notes { r } else { without_notes(r) })
                        .collect(),
                    truncated,
                    review_while_pending: st.keeping.consent.review_while_pending,
                },
            ))
        }
        Route::Recording(id) => {
            let who = session(&req, st).await?;
            allow(st, &who, WATCH, "opening a recording", &client).await?;
            let (h, s) = who;
            let rec = resolve(st, &id, query_param(req.uri().query(), "device"), true).await?;
            openable(&rec, st)?;
            let pending = rec.consent.review.answer == Answer::Pending;
            let manifest = read_manifest(st, &rec.device, &rec.id).await?;
            let e = event(
                &s.reviewer,
                Action::RecordingOpened,
                format!("{}/{}", rec.device, rec.id),
                &client,
                json!({ "review_consent_pending": pending }),
            );
            let rec = with_lifecycle(rec, st, std::time::SystemTime::now());
            let rec = if sees_notes(&s) {
                rec
            } else {
                without_notes(rec)
            };
            let (dev, rid) = (rec.device.clone(), rec.id.clone());
            // Audited first: the session may fetch its objects only once the log says so.
            db(st, move |d| {
                d.append_audit(&e)?;
                d.mark_opened(&h, &dev, &rid)
            })
            .await?;
            Ok(json_resp(
                StatusCode::OK,
                &RecordingAnswer {
                    device: rec.device.clone(),
                    id: rec.id.clone(),
                    objects: format!("/api/recordings/{}/objects/", rec.id),
                    summary: rec,
                    manifest,
                },
            ))
        }
        Route::Object(id, name) => {
            let who = session(&req, st).await?;
            allow(st, &who, WATCH, "fetching a recording's objects", &client).await?;
            let h = who.0;
            let rec = resolve(st, &id, query_param(req.uri().query(), "device"), true).await?;
            // Consent refused after the recording was opened stops it at the next object.
            openable(&rec, st)?;
            let (dev, rid) = (rec.device.clone(), rec.id.clone());
            if !db(st, move |d| d.opened(&h, &dev, &rid)).await? {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "open the recording first (GET /api/recordings/{id}): its opening is audited",
                ));
            }
            let max = st.max_object;
            let store = st.keeping.parts.store.clone();
            let (dev, rid) = (rec.device.clone(), rec.id.clone());
            // Where the object is and its size, from the manifest: only what it lists is served.
            let located = tokio::task::spawn_blocking(
                move || -> Result<Option<(String, String, u64)>, String> {
                    let bytes = store
                        .manifest(&dev, &rid)
                        .map_err(|e| e.to_string())?
                        .ok_or("the recording has no manifest")?;
                    let m = neoflix_format::verify::parse_manifest(&bytes)?;
                    let found = m.init_segments.iter().chain(&m.fragments).find_map(|e| {
                        if e.file == name {
                            Some((e.sha256.clone(), e.size))
                        } else if e.key_file == name {
                            Some((e.key_sha256.clone(), neoflix_format::WRAPPED_KEY_LEN as u64))
                        } else {
                            None
                        }
                    });
                    Ok(found.map(|(sha, size)| (name, sha, size.min(max))))
                },
            )
            .await
            .map_err(internal)?;
            let (name, sha, size) = match located {
                Ok(Some(l)) => l,
                Ok(None) => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        "the recording's manifest lists no such object",
                    ));
                }
                Err(e) => return Err(unreadable(&e)),
            };
            // Objects are held whole while they are sent: all of them together within the
            // budget, so that many reviewers (or one script) cannot take the server's memory.
            let mut held = st.budget.empty();
            if !held.grow(size) {
                return Err(Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        br#"{"error":"the server is sending as much as it may hold at once; try again"}"#,
                    )))
                    .expect("valid response"));
            }
            let store = st.keeping.parts.store.clone();
            let (dev, rid) = (rec.device.clone(), rec.id.clone());
            let read = tokio::task::spawn_blocking(move || {
                store
                    .read_object(&dev, &rid, &name, &sha, size)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(internal)?;
            match read {
                Ok(bytes) => Ok(Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(Bytes::from_owner(HeldBytes {
                        bytes,
                        _held: held,
                    })))
                    .expect("valid response")),
                Err(e) => Err(unreadable(&e)),
            }
        }
        Route::Download(id) => {
            let who = session_for_change(&req, st).await?;
            allow(st, &who, WATCH, "downloading a recording", &client).await?;
            let s = who.1;
            let device = query_param(req.uri().query(), "device");
            let d: DownloadRequest = body_json(req).await?;
            if let Some(why) = d.problem() {
                return Err(error(StatusCode::BAD_REQUEST, why));
            }
            let rec = resolve(st, &id, device, true).await?;
            openable(&rec, st)?;
            audit(
                st,
                event(
                    &s.reviewer,
                    Action::Download,
                    format!("{}/{}", rec.device, rec.id),
                    &client,
                    json!({ "from_secs": d.from_secs, "to_secs": d.to_secs }),
                ),
            )
            .await?;
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .expect("valid response"))
        }
        Route::Fleet => {
            // Every role: whether the rooms work is everyone's business, and tells nothing of
            // what was recorded.
            session(&req, st).await?;
            let v = match &st.fleet {
                Some(f) => f.json(time::OffsetDateTime::now_utc()),
                None => json!({ "devices": [] }),
            };
            Ok(json_resp(StatusCode::OK, &v))
        }
        Route::Consent(id) => {
            let who = session_for_change(&req, st).await?;
            allow(st, &who, CHAIR, "recording consent", &client).await?;
            let s = who.1;
            let device = query_param(req.uri().query(), "device");
            let c: ConsentRequest = body_json(req).await?;
            if let Some(why) = c.problem() {
                return Err(error(StatusCode::BAD_REQUEST, why));
            }
            let rec = resolve(st, &id, device, false).await?;
            let (actor, client) = (s.reviewer.clone(), client.clone());
            let outcome = change(st, move |k| {
                k.set_consent(
                    &rec.device,
                    &rec.id,
                    &c,
                    Who {
                        actor: &actor,
                        client: &client,
                    },
                    std::time::SystemTime::now(),
                )
            })
            .await?;
            let outcome = match outcome {
                Consequence::None => "recorded",
                Consequence::Withdrawn(_) => "withdrawn",
                Consequence::KeptUnderHold(_) => "kept-under-hold",
                Consequence::LeftTeaching => "left-teaching",
            };
            Ok(json_resp(StatusCode::OK, &json!({ "outcome": outcome })))
        }
        Route::Withdraw(id) => {
            let who = session_for_change(&req, st).await?;
            allow(st, &who, CHAIR, "withdrawing a recording", &client).await?;
            let s = who.1;
            let device = query_param(req.uri().query(), "device");
            let w: WithdrawRequest = body_json(req).await?;
            if let Some(why) = w.problem() {
                return Err(error(StatusCode::BAD_REQUEST, why));
            }
            let rec = resolve(st, &id, device, false).await?;
            let (actor, client) = (s.reviewer.clone(), client.clone());
            let shredded = change(st, move |k| {
                k.withdraw(
                    &rec.device,
                    &rec.id,
                    Who {
                        actor: &actor,
                        client: &client,
                    },
                    w.reason.trim(),
                    Cause::Withdrawal,
                    std::time::SystemTime::now(),
                )
            })
            .await?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({
                    "key_records": shredded.key_records,
                    "other_files": shredded.other_files,
                }),
            ))
        }
        Route::Teaching(id) => {
            let who = session_for_change(&req, st).await?;
            allow(st, &who, CHAIR, "changing the teaching library", &client).await?;
            let s = who.1;
            let device = query_param(req.uri().query(), "device");
            let t: TeachingRequest = body_json(req).await?;
            let rec = resolve(st, &id, device, true).await?;
            let (actor, client) = (s.reviewer.clone(), client.clone());
            let until = change(st, move |k| {
                k.teaching(
                    &rec.device,
                    &rec.id,
                    t.days,
                    Who {
                        actor: &actor,
                        client: &client,
                    },
                    std::time::SystemTime::now(),
                )
            })
            .await?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({ "teaching_until_utc": until }),
            ))
        }
        Route::Audit => {
            let who = session(&req, st).await?;
            allow(st, &who, AUDIT, "reading the audit log", &client).await?;
            let s = who.1;
            let query = req.uri().query();
            let f = audit_filter(query)?;
            let csv = query_param(query, "format").as_deref() == Some("csv");
            // Reading it is in it too: the log holds consent notes and who watched what.
            audit(
                st,
                event(
                    &s.reviewer,
                    Action::AuditRead,
                    String::new(),
                    &client,
                    json!({
                        "actor": f.actor, "action": f.action, "recording": f.recording,
                        "since": f.since, "until": f.until, "csv": csv,
                    }),
                ),
            )
            .await?;
            let limit = if csv {
                MAX_AUDIT_EXPORTED
            } else {
                MAX_AUDIT_LISTED
            };
            let (mut entries, chain) = db(st, move |d| {
                Ok((d.audit_matching(&f, limit + 1)?, d.verify_audit()?))
            })
            .await?;
            let truncated = entries.len() > limit;
            entries.truncate(limit);
            let chain = match chain {
                Ok(head) => json!({ "intact": true, "head": head }),
                Err(b) => json!({ "intact": false, "broken_at": b.seq, "why": b.why }),
            };
            if csv {
                if truncated {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("more than {MAX_AUDIT_EXPORTED} entries match: narrow the dates"),
                    ));
                }
                let mut body = String::from(crate::audit::CSV_HEADER);
                for e in entries.iter().rev() {
                    body.push_str(&e.csv_line());
                }
                return Ok(Response::builder()
                    .header("content-type", "text/csv; charset=utf-8")
                    .header(
                        "content-disposition",
                        "attachment; filename=\"neoflix-audit.csv\"",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid response"));
            }
            Ok(json_resp(
                StatusCode::OK,
                &json!({
                    "entries": entries,
                    "truncated": truncated,
                    "chain": chain,
                    "actions": crate::audit::Action::ALL.map(|a| a.as_str()),
                }),
            ))
        }
    }
}

/// Runs a lifecycle change off the runtime; its refusals become answers the chair can act on.
async fn change<T: Send + 'static>(
    st: &State,
    f: impl FnOnce(&Keeper) -> Result<T, LifecycleError> + Send + 'static,
) -> Result<T, Resp> {
    let parts = st.keeping.parts.clone();
    match tokio::task::spawn_blocking(move || f(&parts.keeper())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(
            e @ (LifecycleError::Held { .. }
            | LifecycleError::NoUseConsent(_)
            | LifecycleError::RefusalIsFinal { .. }),
        )) => Err(error(StatusCode::CONFLICT, e.to_string())),
        Ok(Err(e @ LifecycleError::NotFound(_))) => {
            Err(error(StatusCode::NOT_FOUND, e.to_string()))
        }
        Ok(Err(e @ LifecycleError::Days)) => Err(error(StatusCode::BAD_REQUEST, e.to_string())),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

/// An object's bytes and the share of the budget they hold until hyper has sent them.
struct HeldBytes {
    bytes: Vec<u8>,
    /// Returned to the budget when hyper drops the body.
    _held: crate::limits::Held,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A stored object that cannot be read: the server's fault, logged, not the client's.
fn unreadable(e: &str) -> Resp {
    log::error!(error = crate::esc(e).as_str(); "review: cannot read a stored object");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot read the object; see the server's log",
    )
}

/// `POST /api/login`.
async fn login(
    req: Request<Incoming>,
    st: &Arc<State>,
    peer: SocketAddr,
    client: &str,
) -> Result<Resp, Resp> {
    check_origin(&req)?;
    let json_type = header(&req, "content-type").is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json_type {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sign-in needs Content-Type: application/json",
        ));
    }
    let l: LoginRequest = body_json(req).await?;
    if neoflix_format::reviewer::ReviewerName::parse(&l.user).is_err() {
        return Err(error(StatusCode::BAD_REQUEST, "not a reviewer name"));
    }
    let name = l.user;
    let now = now_secs();
    let address = ratelimit::address_key(peer.ip());
    let auth = B64.decode(l.auth.trim()).unwrap_or_default();
    let (n, a) = (name.clone(), address.clone());
    let attempt = db(st, move |d| d.sign_in(&n, &a, &auth, now)).await?;
    let r = match attempt {
        Attempt::Right(r) => r,
        Attempt::Refused {
            retry_after_secs: secs,
            limit,
        } => {
            let lock = match limit {
                Limit::Name => format!("name:{name}"),
                Limit::Address => format!("address:{address}"),
            };
            let first = st
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_of_lock(&lock, now, secs);
            if first {
                audit(
                    st,
                    event(
                        &name,
                        Action::SignInRefused,
                        String::new(),
                        client,
                        json!({ "limit": limit.as_str(), "retry_after_secs": secs }),
                    ),
                )
                .await?;
            }
            return Err(too_many(secs));
        }
        Attempt::Wrong => {
            audit(
                st,
                event(
                    &name,
                    Action::SignInFailed,
                    String::new(),
                    client,
                    json!({}),
                ),
            )
            .await?;
            return Err(error(StatusCode::UNAUTHORIZED, "wrong name or passphrase"));
        }
    };
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS has randomness");
    let token = B64URL.encode(raw);
    let csrf = random_hex();
    let (h, c2, n) = (token_hash(&token), csrf.clone(), name.clone());
    let (idle, max) = (st.idle_secs, st.max_secs);
    db(st, move |d| {
        // Sessions nobody came back to go here, so the table stays as small as the live ones.
        d.expire_sessions(now, idle, max)?;
        d.add_session(&h, &c2, &n, now)
    })
    .await?;
    audit(
        st,
        event(&name, Action::SignIn, String::new(), client, json!({})),
    )
    .await?;
    let s = Session {
        reviewer: name.clone(),
        roles: r.file.roles.clone(),
        csrf: csrf.clone(),
        created: now,
        last_seen: now,
    };
    let expires_utc = expires_utc(&s, st.idle_secs, st.max_secs);
    let mut resp = json_resp(
        StatusCode::OK,
        &LoginAnswer {
            user: name,
            csrf,
            roles: r.file.roles.clone(),
            wrapped_key: r.file.wrapped_key,
            department_key_id: r.file.department_key_id,
            salt: r.file.kdf.salt,
            expires_utc,
        },
    );
    resp.headers_mut().insert(
        "set-cookie",
        guard::session_cookie(&token).parse().expect("a cookie"),
    );
    Ok(resp)
}

/// One query parameter, taken only when its value needs no decoding.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

fn filter(query: Option<&str>) -> Result<Filter, Resp> {
    let time = |key: &str| -> Result<Option<String>, Resp> {
        match query_param(query, key) {
            None => Ok(None),
            Some(v) => {
                // `+` of an offset arrives as a space or %2B: Z is what the page sends.
                let v = v.replace("%3A", ":").replace("%3a", ":");
                neoflix_format::parse_utc(&v)
                    .map(|t| Some(neoflix_format::utc(t)))
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            format!("{key}: not an RFC 3339 time"),
                        )
                    })
            }
        }
    };
    Ok(Filter {
        device: query_param(query, "device"),
        since: time("since")?,
        until: time("until")?,
    })
}

/// A query value percent-decoded (`+` a space), at most 200 bytes, valid UTF-8.
fn decoded(query: Option<&str>, key: &str) -> Result<Option<String>, Resp> {
    let Some(raw) = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key && !v.is_empty()).then_some(v)
        })
    }) else {
        return Ok(None);
    };
    let bad = || {
        error(
            StatusCode::BAD_REQUEST,
            format!("{key}: not a readable value"),
        )
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(|c| (c as char).to_digit(16));
                let lo = bytes.next().and_then(|c| (c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(bad()),
                }
            }
            b => out.push(b),
        }
        if out.len() > 200 {
            return Err(bad());
        }
    }
    String::from_utf8(out).map(Some).map_err(|_| bad())
}

fn audit_filter(query: Option<&str>) -> Result<AuditFilter, Resp> {
    let time = |key: &str| -> Result<Option<String>, Resp> {
        decoded(query, key)?
            .map(|v| {
                neoflix_format::parse_utc(&v)
                    .map(neoflix_format::utc)
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            format!("{key}: not an RFC 3339 time"),
                        )
                    })
            })
            .transpose()
    };
    let action = decoded(query, "action")?;
    if let Some(a) = &action
        && !crate::audit::Action::ALL.iter().any(|k| k.as_str() == a)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "action: not an action the audit log records",
        ));
    }
    Ok(AuditFilter {
        actor: decoded(query, "actor")?,
        action,
        recording: decoded(query, "recording")?,
        since: time("since")?,
        until: time("until")?,
    })
}

/// The one recording `id` names (on `device`, when given); `complete`: only once its manifest
/// was accepted.
async fn resolve(
    st: &State,
    id: &str,
    device: Option<String>,
    complete: bool,
) -> Result<Summary, Resp> {
    let i = id.to_string();
    let mut found = db(st, move |d| d.recordings_with_id(&i)).await?;
    if let Some(dev) = &device {
        found.retain(|s| &s.device == dev);
    }
    match found.len() {
        0 => Err(error(StatusCode::NOT_FOUND, "no such recording")),
        1 => {
            let s = found.pop().expect("one");
            if complete && s.upload != Upload::Complete {
                return Err(error(
                    StatusCode::CONFLICT,
                    "the recording is still uploading",
                ));
            }
            Ok(s)
        }
        _ => {
            let devices: Vec<String> = found.into_iter().map(|s| s.device).collect();
            Err(json_resp(
                StatusCode::CONFLICT,
                &json!({
                    "error": format!("several devices hold a recording with this id ({}): add ?device=", devices.join(", ")),
                    "devices": devices,
                }),
            ))
        }
    }
}

async fn read_manifest(st: &State, device: &str, id: &str) -> Result<Manifest, Resp> {
    let store = st.keeping.parts.store.clone();
    let (device, id) = (device.to_string(), id.to_string());
    let r = tokio::task::spawn_blocking(move || store.manifest(&device, &id))
        .await
        .map_err(internal)?;
    match r {
        Ok(Some(b)) => serde_json::from_slice::<Manifest>(&b)
            .map_err(|e| internal(format!("stored manifest: {e}"))),
        Ok(None) => Err(internal("stored manifest: not there".to_string())),
        Err(e) => Err(internal(format!("stored manifest: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_and_time_filters() {
        assert_eq!(
            query_param(Some("device=room-1&x=2"), "device"),
            Some("room-1".into())
        );
        assert_eq!(query_param(Some("device="), "device"), None);
        assert_eq!(query_param(None, "device"), None);
        let f = filter(Some(
            "since=2026-11-28T10:00:00Z&until=2026-11-28T11:00:00.5Z",
        ))
        .unwrap();
        assert_eq!(f.since.as_deref(), Some("2026-11-28T10:00:00.000Z"));
        assert_eq!(f.until.as_deref(), Some("2026-11-28T11:00:00.500Z"));
        assert!(filter(Some("since=yesterday")).is_err());
    }

    #[test]
    fn audit_filters_are_decoded_and_checked() {
        let f = audit_filter(Some(
            "actor=dr.chair&action=consent-set&recording=room-1%2Fr-1&since=2026-11-28T10%3A00%3A00Z&format=csv",
        ))
        .unwrap();
        assert_eq!(f.actor.as_deref(), Some("dr.chair"));
        assert_eq!(f.recording.as_deref(), Some("room-1/r-1"));
        assert_eq!(f.since.as_deref(), Some("2026-11-28T10:00:00.000Z"));
        assert!(audit_filter(Some("action=drop-table")).is_err());
        assert!(audit_filter(Some("actor=%zz")).is_err());
        assert!(audit_filter(Some("actor=%ff%fe")).is_err());
        assert!(audit_filter(Some(&format!("actor={}", "a".repeat(201)))).is_err());
        assert!(audit_filter(Some("until=soon")).is_err());
        assert_eq!(audit_filter(None).unwrap(), AuditFilter::default());
    }

    #[test]
    fn an_objects_share_of_the_budget_returns_when_its_body_is_dropped() {
        let budget = crate::limits::Budget::new(100);
        let mut held = budget.empty();
        assert!(held.grow(60));
        let body = Bytes::from_owner(HeldBytes {
            bytes: vec![7; 60],
            _held: held,
        });
        let copy = body.clone();
        drop(body);
        assert_eq!(budget.available(), 40, "held while any handle is alive");
        assert!(!budget.empty().grow(41));
        drop(copy);
        assert_eq!(budget.available(), 100);
    }
}
