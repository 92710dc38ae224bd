// The review page (docs/review.md): sign in, list recordings, play one, download it.
//
// Keys live only in the WebAssembly module (neoflix_web.js): the passphrase is stretched
// there, the department key unlocked there, every sealed object opened there. This file moves
// bytes between the API, the module and the <video> element (Media Source Extensions); it never
// makes a plaintext file for playback. Text from the server is set with textContent only.

import init, { stretch, Keyring, MediaInit, Download } from "./neoflix_web.js";

/** Seconds of video kept fetched ahead of the playhead. */
const AHEAD_SECS = 20;
/** Seconds kept behind the playhead; older buffered media is removed (SourceBuffer quota). */
const BEHIND_SECS = 30;

const state = {
  /** The signed-in reviewer's name, or null. */
  user: null,
  /** The session's CSRF token, sent with every POST. */
  csrf: null,
  /** What the person may do: chair, reviewer, privacy-officer, it-admin. */
  roles: [],
  /** The unlocked department key (WASM memory); freed at sign-out. Null for roles that do
   * not watch video. */
  keyring: null,
  /** The open player, torn down when the view changes. */
  player: null,
  /** Counts views: an async render whose view is no longer the current one stops. */
  view: 0,
};

const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: el("p", {class: "x"}, "text", child...). Strings become text nodes. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

/** Shows a message at the bottom of the page: a problem, or (`ok`) what a change did. */
function showAlert(message, ok = false) {
  const a = $("#alert");
  a.textContent = message || "";
  a.classList.toggle("ok", ok);
  a.hidden = !message;
}

class HttpError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Calls the JSON API; a 401 outside sign-in ends the session in this tab. `raw`: the
 * response itself; `text`: its body as text (for the WebAssembly to parse and check). */
async function api(method, path, body, { raw = false, text = false } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-Neoflix-CSRF"] = state.csrf;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try {
      const j = await r.json();
      if (j && typeof j.error === "string") message = j.error;
    } catch (_) {
      // Not JSON: keep the status line.
    }
    if (r.status === 401 && state.user && !path.startsWith("/api/login")) {
      forget();
      route();
      showAlert("Your session has ended (expired, or ended on the server): sign in again.");
    }
    throw new HttpError(r.status, message, r.headers.get("Retry-After"));
  }
  if (raw) return r;
  if (text) return r.text();
  if (r.status === 204) return null;
  return r.json();
}

/** Forgets the key and the session in this tab. */
function forget() {
  stopPlayer();
  if (state.keyring) {
    state.keyring.free();
  }
  state.keyring = null;
  state.user = null;
  state.roles = [];
  state.csrf = null;
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#signout").hidden = true;
}

// ---- formatting -------------------------------------------------------------------------

function clock(secs, { sign = false, tenths = false } = {}) {
  if (!Number.isFinite(secs)) return "–";
  const neg = secs < 0;
  let s = Math.abs(secs);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const whole = Math.floor(s);
  let out = (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(whole).padStart(2, "0")}`;
  if (tenths) out += `.${Math.floor((s - whole) * 10)}`;
  if (neg) return `−${out}`;
  return sign ? `+${out}` : out;
}

function localTime(utc, withDate = true) {
  if (!utc) return "–";
  const d = new Date(utc);
  if (Number.isNaN(d.getTime())) return "–";
  return withDate
    ? d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" })
    : d.toLocaleTimeString(undefined, { timeStyle: "medium" });
}

// ---- routing ----------------------------------------------------------------------------

function navigate(path) {
  history.pushState({}, "", path);
  route();
}

function setView(name) {
  document.body.dataset.view = name;
}

const has = (role) => state.roles.includes(role);
/** Whether this person watches video (and so holds the department key). */
const watches = () => has("chair") || has("reviewer");

function route() {
  state.view += 1;
  stopPlayer();
  closeDialog();
  showAlert("");
  if (!state.user) {
    renderSignIn();
    return;
  }
  const m = location.pathname.match(/^\/recordings\/([^/]+)$/);
  if (m && state.keyring) renderPlayer(decodeURIComponent(m[1]), new URLSearchParams(location.search).get("device"));
  else if (location.pathname === "/audit" && has("privacy-officer")) renderAudit();
  else if (has("chair") || has("reviewer") || has("privacy-officer")) renderList();
  else renderRooms();
}

// ---- sign-in ----------------------------------------------------------------------------

async function renderSignIn() {
  setView("signin");
  const main = $("#main");
  const status = el("p", { class: "status", role: "status", "aria-live": "polite" });
  const user = el("input", { id: "user", name: "user", autocomplete: "username", required: true, autocapitalize: "off", spellcheck: "false" });
  const pass = el("input", { id: "passphrase", name: "passphrase", type: "password", autocomplete: "current-password", required: true });
  const button = el("button", { type: "submit" }, "Sign in");
  const form = el(
    "form",
    { class: "signin", id: "signin" },
    el("h2", {}, "Sign in"),
    el("p", { class: "hint" }, "Your passphrase unlocks the department key in this tab only; the server never sees it, and a reload asks for it again."),
    el("label", { for: "user" }, "Name"),
    user,
    el("label", { for: "passphrase" }, "Passphrase"),
    pass,
    button,
    status,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    showAlert("");
    try {
      await signIn(user.value.trim(), pass.value, status);
      pass.value = "";
      route();
    } catch (e) {
      status.textContent = "";
      if (e instanceof HttpError && e.status === 401) showAlert("Wrong name or passphrase.");
      else if (e instanceof HttpError && e.status === 429)
        showAlert(`Too many failed sign-ins: try again in ${e.retryAfter || "a few"} seconds.`);
      else showAlert(`Cannot sign in: ${e.message}`);
      pass.select();
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  // A session cookie may outlive a reload; the key does not. Offer the name back.
  try {
    const s = await api("GET", "/api/session");
    if (s && s.user && !user.value) user.value = s.user;
  } catch (_) {
    // Not signed in: nothing to fill.
  }
  (user.value ? pass : user).focus();
}

async function signIn(name, passphrase, status) {
  status.textContent = "Checking the name…";
  const params = await api("POST", "/api/login/params", { user: name });
  status.textContent = "Stretching the passphrase (about a second)…";
  // Let the status paint before the stretch holds the thread.
  await new Promise((r) => setTimeout(r, 30));
  const stretched = stretch(passphrase, JSON.stringify(params));
  let keyring;
  try {
    status.textContent = "Signing in…";
    const answer = await api("POST", "/api/login", { user: name, auth: stretched.authKey() });
    // Roles without video get no key: nothing to unlock.
    keyring = answer.wrapped_key ? stretched.unlock(JSON.stringify(answer)) : null;
    state.user = answer.user;
    state.roles = Array.isArray(answer.roles) ? answer.roles : [];
    state.csrf = answer.csrf;
  } finally {
    stretched.free();
  }
  state.keyring = keyring;
  const roleNames = { chair: "chair", reviewer: "reviewer", "privacy-officer": "privacy officer", "it-admin": "IT admin" };
  $("#who").textContent = `Signed in as ${state.user} (${state.roles.map((r) => roleNames[r] || r).join(", ")})`;
  $("#who").hidden = false;
  $("#signout").hidden = false;
  $("#nav-audit").hidden = !has("privacy-officer");
  $("#nav-recordings").hidden = !(watches() || has("privacy-officer"));
  $("#nav").hidden = false;
  status.textContent = "";
}

async function signOut() {
  try {
    if (state.csrf) await api("POST", "/api/logout");
  } catch (_) {
    // Signed out in this tab all the same.
  }
  forget();
  history.pushState({}, "", "/");
  route();
}

// ---- recordings list --------------------------------------------------------------------

async function renderList() {
  setView("list");
  const main = $("#main");
  const params = new URLSearchParams(location.search);
  const room = el("select", { id: "room", name: "device" }, el("option", { value: "" }, "All rooms"));
  const since = el("input", { id: "since", name: "since", type: "date", value: params.get("since") || "" });
  const until = el("input", { id: "until", name: "until", type: "date", value: params.get("until") || "" });
  const filters = el(
    "form",
    { class: "filters", role: "search" },
    el("label", { for: "room" }, "Room"),
    room,
    el("label", { for: "since" }, "From"),
    since,
    el("label", { for: "until" }, "To"),
    until,
    el("button", { type: "submit" }, "Filter"),
  );
  const fleet = el("section", { class: "fleet", "aria-labelledby": "fleet-h" }, el("h2", { id: "fleet-h" }, "Rooms"));
  const table = el("table", { class: "recordings" });
  const listStatus = el("p", { class: "status", role: "status", "aria-live": "polite" }, "Loading recordings…");
  main.replaceChildren(fleet, el("section", { "aria-labelledby": "rec-h" }, el("h2", { id: "rec-h" }, "Recordings"), filters, listStatus, table));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (room.value) q.set("device", room.value);
    if (since.value) q.set("since", since.value);
    if (until.value) q.set("until", until.value);
    navigate(`/${q.toString() ? `?${q}` : ""}`);
  });
  renderFleet(fleet);

  const q = new URLSearchParams();
  if (params.get("device")) q.set("device", params.get("device"));
  // Dates are the reviewer's local days.
  if (params.get("since")) q.set("since", new Date(`${params.get("since")}T00:00:00`).toISOString());
  if (params.get("until")) q.set("until", new Date(`${params.get("until")}T23:59:59.999`).toISOString());
  const view = state.view;
  let all;
  let list;
  try {
    [all, list] = await Promise.all([api("GET", "/api/recordings"), api("GET", `/api/recordings?${q}`)]);
  } catch (e) {
    if (view !== state.view) return;
    listStatus.textContent = "";
    showAlert(`Cannot list recordings: ${e.message}`);
    return;
  }
  if (view !== state.view) return;
  for (const d of [...new Set(all.recordings.map((r) => r.device))].sort()) {
    room.append(el("option", { value: d, selected: d === params.get("device") }, d));
  }
  // The server's order: newest first (by trigger, or by arrival while uploading).
  const rows = list.recordings;
  listStatus.textContent = rows.length ? `${rows.length} recording${rows.length === 1 ? "" : "s"}` : "No recordings match.";
  if (list.truncated) {
    // The server answers the newest 1000 (docs/review.md): older ones need a narrower filter.
    listStatus.textContent += " (the newest only: choose a room or dates to see older ones)";
  }
  const head = el("tr", {}, ...["Room", "Started", "Duration", "Pre-roll", "Markers", "Trigger", "Stop reason", "Status", "Upload", "Consent", "Kept", ""].map((h) => el("th", { scope: "col" }, h)));
  const policy = { reviewWhilePending: list.review_while_pending !== false };
  table.replaceChildren(el("caption", { class: "visually-hidden" }, "Recordings, newest first"), el("thead", {}, head), el("tbody", {}, ...rows.map((r) => row(r, policy))));
}

const ANSWER_MARK = { granted: "✓", refused: "✗", pending: "?" };
const QUESTIONS = [["filmed", "Filmed"], ["review", "Review"], ["use", "Teaching/research"]];

/** The consent cell: each question's answer, in words for screen readers and as a mark. */
function consentCell(r, policy) {
  const c = r.consent || {};
  const items = QUESTIONS.map(([q, name]) => {
    const a = (c[q] && c[q].answer) || "pending";
    return el("span", { class: `consent ${a}`, "data-question": q, "data-answer": a, title: `${name}: ${a}` }, `${name[0]}${ANSWER_MARK[a] || "?"}`, el("span", { class: "visually-hidden" }, ` ${name} ${a};`));
  });
  const review = (c.review && c.review.answer) || "pending";
  const flag = review === "pending" ? el("span", { class: "flag", "data-flag": "review-pending" }, policy.reviewWhilePending ? "review consent pending" : "closed until review consent") : null;
  return el("td", { class: "consent-cell" }, ...items, flag);
}

/** "deleted in N days", held, or in the teaching library. */
function keptCell(r) {
  const l = r.lifecycle || {};
  if (l.held) return el("td", { "data-kept": "held" }, "legal hold");
  const days = l.delete_after_utc ? Math.max(0, Math.ceil((new Date(l.delete_after_utc).getTime() - Date.now()) / 86400000)) : null;
  const when = days === null ? "kept (no retention)" : days === 0 ? "deleted today" : `deleted in ${days} day${days === 1 ? "" : "s"}`;
  if (l.teaching_until_utc) return el("td", { "data-kept": "teaching", title: `teaching library until ${localTime(l.teaching_until_utc)}` }, `teaching library; ${when}`);
  return el("td", { "data-kept": days === null ? "kept" : String(days) }, when);
}

function row(r, policy) {
  const uploading = r.upload !== "complete";
  const href = `/recordings/${encodeURIComponent(r.id)}?device=${encodeURIComponent(r.device)}`;
  const answer = (q) => (r.consent && r.consent[q] && r.consent[q].answer) || "pending";
  const review = answer("review");
  const refused = review === "refused" || answer("filmed") === "refused";
  const closed = refused || (review === "pending" && !policy.reviewWhilePending);
  let open;
  if (!watches()) open = null;
  else if (uploading) open = el("span", { class: "muted" }, "still uploading");
  else if (closed) open = el("span", { class: "muted" }, refused ? "consent refused" : "awaiting consent");
  else open = el("a", { href, class: "open", "aria-label": `Open the recording of ${r.device} at ${localTime(r.trigger_utc)}`, onclick: (ev) => { ev.preventDefault(); navigate(href); } }, "Open");
  const manage = has("chair")
    ? el("button", { type: "button", class: "manage", "aria-label": `Consent and lifecycle of the recording of ${r.device} at ${localTime(r.trigger_utc || r.received_utc)}`, onclick: () => openLifecycle(r) }, "Consent…")
    : null;
  const markers = Array.isArray(r.markers) ? r.markers.length : Number(r.markers) || 0;
  return el(
    "tr",
    { "data-recording": r.id, "data-device": r.device, "data-upload": r.upload, class: uploading ? "uploading" : null },
    el("td", {}, String(r.device)),
    el("td", {}, localTime(r.first_frame_utc || r.trigger_utc)),
    el("td", {}, uploading && !r.duration_secs ? "–" : clock(r.duration_secs)),
    el("td", {}, clock(r.preroll_secs)),
    el("td", {}, String(markers)),
    el("td", {}, String(r.trigger || "–")),
    el("td", {}, String(r.stop_reason || "–")),
    el("td", {}, r.status === "interrupted" ? "interrupted" : uploading ? "–" : "complete"),
    el("td", {}, uploading ? "uploading…" : "complete"),
    consentCell(r, policy),
    keptCell(r),
    el("td", {}, open, manage ? " " : null, manage),
  );
}

// ---- the chair's lifecycle dialog ---------------------------------------------------------

function closeDialog() {
  const d = $("#lifecycle");
  if (d) d.remove();
}

/** Consent, the teaching library and withdrawal of one recording: the chair's decisions, each
 * recorded in the audit log by the server. */
function openLifecycle(r) {
  closeDialog();
  const q = `?device=${encodeURIComponent(r.device)}`;
  const base = `/api/recordings/${encodeURIComponent(r.id)}`;
  const status = el("p", { class: "status", role: "status", "aria-live": "polite", id: "lifecycle-status" });
  const done = (message) => {
    closeDialog();
    route();
    if (message) showAlert(message, true);
  };
  const c = r.consent || {};
  const rows = QUESTIONS.map(([key, name]) => {
    const cur = c[key] || { answer: "pending" };
    const by = cur.by ? ` (by ${cur.by}, ${localTime(cur.utc)})` : "";
    return el("tr", { "data-question": key }, el("th", { scope: "row" }, name), el("td", {}, `${cur.answer}${by}`), el("td", {}, cur.form_ref || ""), el("td", {}, cur.note || ""));
  });
  const question = el("select", { id: "consent-question" }, ...QUESTIONS.map(([k, n]) => el("option", { value: k }, n)));
  const answer = el("select", { id: "consent-answer" }, ...["granted", "refused", "pending"].map((a) => el("option", { value: a }, a)));
  const formRef = el("input", { id: "consent-form-ref", maxlength: "100", size: "16" });
  const note = el("input", { id: "consent-note", maxlength: "500", size: "40" });
  const consentForm = el(
    "form",
    { id: "consent-form", class: "consent-form" },
    el("label", { for: "consent-question" }, "Question"), question,
    el("label", { for: "consent-answer" }, "Answer"), answer,
    el("label", { for: "consent-form-ref" }, "Form reference"), formRef,
    el("label", { for: "consent-note" }, "Note"), note,
    el("button", { type: "submit", id: "consent-save" }, "Record answer"),
  );
  consentForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const refusing = answer.value === "refused" && question.value !== "use";
    if (refusing && !confirm("Refusing consent to film or review deletes this recording now, here and on the room's box. It cannot be undone. Record the refusal?")) return;
    try {
      const out = await api("POST", `${base}/consent${q}`, { question: question.value, answer: answer.value, note: note.value, form_ref: formRef.value });
      const said = {
        withdrawn: "Consent refused: the recording was deleted.",
        "kept-under-hold": "Consent refused, but a legal hold keeps the recording; nobody can open it.",
        "left-teaching": "Recorded; the recording left the teaching library.",
      };
      done(said[out.outcome] || "Consent recorded.");
    } catch (e) {
      status.textContent = `Not recorded: ${e.message}`;
    }
  });

  const l = r.lifecycle || {};
  const days = el("input", { id: "teaching-days", type: "number", min: "1", max: "3650", value: "365", size: "6" });
  const teaching = el(
    "form",
    { id: "teaching-form" },
    el("p", {}, l.teaching_until_utc ? `In the teaching library until ${localTime(l.teaching_until_utc)}.` : "Not in the teaching library (needs consent to teaching/research use)."),
    el("label", { for: "teaching-days" }, "Keep for (days)"), days,
    el("button", { type: "submit", id: "teaching-add" }, l.teaching_until_utc ? "Change date" : "Add to teaching library"),
    l.teaching_until_utc ? el("button", { type: "button", id: "teaching-remove", onclick: async () => {
      try {
        await api("POST", `${base}/teaching${q}`, { days: null });
        done("Taken out of the teaching library: the usual retention applies.");
      } catch (e) {
        status.textContent = `Not changed: ${e.message}`;
      }
    } }, "Take out") : null,
  );
  teaching.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", `${base}/teaching${q}`, { days: Number(days.value) });
      done(`In the teaching library until ${localTime(out.teaching_until_utc)}.`);
    } catch (e) {
      status.textContent = `Not changed: ${e.message}`;
    }
  });

  const reason = el("input", { id: "withdraw-reason", maxlength: "500", size: "40", required: true });
  const confirmBox = el("input", { id: "withdraw-confirm", type: "checkbox", required: true });
  const withdraw = el(
    "form",
    { id: "withdraw-form", class: "danger" },
    el("p", {}, "Withdrawal deletes the recording from this server and from the room's box. Only the audit entry (who, when, why) remains. It cannot be undone."),
    el("label", { for: "withdraw-reason" }, "Reason"), reason,
    el("label", { for: "withdraw-confirm" }, confirmBox, " I understand the recording is deleted for good"),
    el("button", { type: "submit", id: "withdraw" }, "Withdraw and delete"),
  );
  withdraw.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!confirmBox.checked || !reason.value.trim()) {
      status.textContent = "Give a reason and tick the confirmation to withdraw.";
      return;
    }
    try {
      await api("POST", `${base}/withdraw${q}`, { reason: reason.value });
      done("Withdrawn: the recording was deleted; the room's box deletes its copy when it next connects.");
    } catch (e) {
      status.textContent = `Not withdrawn: ${e.message}`;
    }
  });

  const dialog = el(
    "dialog",
    { id: "lifecycle", "aria-labelledby": "lifecycle-h" },
    el("h2", { id: "lifecycle-h" }, `${r.device} · ${localTime(r.trigger_utc || r.received_utc)}`),
    el("h3", {}, "Consent"),
    el("table", { class: "consent-table" }, el("thead", {}, el("tr", {}, ...["Question", "Answer", "Form", "Note"].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows)),
    consentForm,
    el("h3", {}, "Teaching library"),
    teaching,
    el("h3", {}, "Withdraw"),
    withdraw,
    status,
    el("button", { type: "button", id: "lifecycle-close", onclick: closeDialog }, "Close"),
  );
  document.body.append(dialog);
  dialog.showModal();
}

// ---- rooms only (IT admin) ----------------------------------------------------------------

function renderRooms() {
  setView("rooms");
  const fleet = el("section", { class: "fleet", "aria-labelledby": "fleet-h" }, el("h2", { id: "fleet-h" }, "Rooms"));
  $("#main").replaceChildren(fleet);
  renderFleet(fleet);
}

// ---- the privacy officer's audit log -----------------------------------------------------

async function renderAudit() {
  setView("audit");
  const main = $("#main");
  const params = new URLSearchParams(location.search);
  const actor = el("input", { id: "audit-actor", value: params.get("actor") || "", size: "14" });
  const action = el("select", { id: "audit-action" }, el("option", { value: "" }, "Any action"));
  const recording = el("input", { id: "audit-recording", value: params.get("recording") || "", size: "24", placeholder: "room/recording-id" });
  const since = el("input", { id: "audit-since", type: "date", value: params.get("since") || "" });
  const until = el("input", { id: "audit-until", type: "date", value: params.get("until") || "" });
  const form = el(
    "form",
    { class: "filters", role: "search", id: "audit-filters" },
    el("label", { for: "audit-actor" }, "Who"), actor,
    el("label", { for: "audit-action" }, "Action"), action,
    el("label", { for: "audit-recording" }, "Recording"), recording,
    el("label", { for: "audit-since" }, "From"), since,
    el("label", { for: "audit-until" }, "To"), until,
    el("button", { type: "submit" }, "Filter"),
  );
  const q = new URLSearchParams();
  for (const [k, v] of [["actor", actor.value.trim()], ["recording", recording.value.trim()], ["action", params.get("action") || ""]]) if (v) q.set(k, v);
  if (params.get("since")) q.set("since", new Date(`${params.get("since")}T00:00:00`).toISOString());
  if (params.get("until")) q.set("until", new Date(`${params.get("until")}T23:59:59.999`).toISOString());
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of [["actor", actor.value.trim()], ["action", action.value], ["recording", recording.value.trim()], ["since", since.value], ["until", until.value]]) if (v) p.set(k, v);
    navigate(`/audit${p.toString() ? `?${p}` : ""}`);
  });
  const csv = new URLSearchParams(q);
  csv.set("format", "csv");
  const exportLink = el("a", { href: `/api/audit?${csv}`, download: "neoflix-audit.csv", id: "audit-export" }, "Export CSV");
  const chain = el("p", { id: "audit-chain", role: "status" });
  const table = el("table", { class: "audit", id: "audit-table" });
  main.replaceChildren(el("section", { "aria-labelledby": "audit-h" }, el("h2", { id: "audit-h" }, "Audit log"), form, el("p", {}, exportLink), chain, table));
  const view = state.view;
  let a;
  try {
    a = await api("GET", `/api/audit?${q}`);
  } catch (e) {
    if (view !== state.view) return;
    showAlert(`Cannot read the audit log: ${e.message}`);
    return;
  }
  if (view !== state.view) return;
  for (const name of a.actions || []) action.append(el("option", { value: name, selected: name === params.get("action") }, name));
  chain.className = a.chain && a.chain.intact ? "ok" : "broken";
  chain.dataset.intact = String(!!(a.chain && a.chain.intact));
  chain.textContent = a.chain && a.chain.intact
    ? "The log's hash chain is intact: no entry was changed, removed or reordered."
    : `The log's hash chain is broken at entry ${a.chain ? a.chain.broken_at : "?"}: ${a.chain ? a.chain.why : ""}. Tell the IT department; keep the journal's copy of the hashes.`;
  const head = el("tr", {}, ...["#", "When", "Who", "Action", "Recording", "From", "Details"].map((h) => el("th", { scope: "col" }, h)));
  const body = el("tbody", {}, ...a.entries.map((e) => el(
    "tr",
    { "data-seq": e.seq, "data-action": e.action },
    el("td", {}, String(e.seq)),
    el("td", {}, localTime(e.utc)),
    el("td", {}, e.actor),
    el("td", {}, e.action),
    el("td", {}, e.recording),
    el("td", {}, e.client),
    el("td", { class: "detail" }, e.detail === "{}" ? "" : e.detail),
  )));
  table.replaceChildren(el("caption", {}, `${a.entries.length} entr${a.entries.length === 1 ? "y" : "ies"}, newest first${a.truncated ? " (the newest only: narrow the filter or export)" : ""}`), el("thead", {}, head), body);
}

async function renderFleet(section) {
  const view = state.view;
  let fleet;
  try {
    fleet = await api("GET", "/api/fleet");
  } catch (e) {
    if (view !== state.view) return;
    section.append(el("p", { class: "muted" }, `Room status unavailable: ${e.message}`));
    return;
  }
  if (view !== state.view) return;
  const devices = fleet.devices || [];
  if (!devices.length) {
    section.append(el("p", { class: "muted" }, "No room status (the server has no MQTT broker configured, or no room has reported)."));
    return;
  }
  const tiles = el("ul", { class: "tiles" });
  for (const d of devices) {
    const reasons = Array.isArray(d.reasons) ? d.reasons : [];
    tiles.append(
      el(
        "li",
        { class: `tile ${d.ready ? "ready" : "not-ready"}`, "data-device": d.device },
        el("h3", {}, String(d.device)),
        el("p", { class: "state" }, d.ready ? "Ready" : "Not ready", ` · ${String(d.state || "unknown")}`),
        reasons.length ? el("ul", { class: "reasons" }, ...reasons.map((x) => el("li", {}, String(x)))) : null,
        d.updated_utc ? el("p", { class: "muted" }, `updated ${localTime(d.updated_utc)}`) : null,
      ),
    );
  }
  section.append(tiles);
}

// ---- player -----------------------------------------------------------------------------

function stopPlayer() {
  if (state.player) {
    state.player.stop();
    state.player = null;
  }
}

/** One `<video>` with its own MediaSource: the first view (with the sound), or the second
 * camera's. A browser plays one video track per SourceBuffer, so two views need two. */
class Lane {
  constructor(video, view) {
    this.video = video;
    this.view = view;
    this.currentInit = null;
    /** Fragments this view held right after their append. */
    this.held = new Set();
    /** Why this view is given up, once it is. */
    this.broken = null;
  }

  async open(mime, duration) {
    this.ms = new MediaSource();
    const url = URL.createObjectURL(this.ms);
    this.video.src = url;
    await new Promise((r) => this.ms.addEventListener("sourceopen", r, { once: true }));
    URL.revokeObjectURL(url);
    if (!MediaSource.isTypeSupported(mime)) {
      throw new Error(`this browser cannot play ${mime}`);
    }
    this.sb = this.ms.addSourceBuffer(mime);
    this.sb.mode = "segments";
    this.ms.duration = duration;
  }

  close() {
    this.video.removeAttribute("src");
    this.video.load();
  }

  appendBuffer(bytes) {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.sb.removeEventListener("updateend", done);
        this.sb.removeEventListener("error", fail);
        resolve();
      };
      const fail = () => {
        this.sb.removeEventListener("updateend", done);
        this.sb.removeEventListener("error", fail);
        reject(new Error("the browser could not decode the media"));
      };
      this.sb.addEventListener("updateend", done);
      this.sb.addEventListener("error", fail);
      try {
        this.sb.appendBuffer(bytes);
      } catch (e) {
        this.sb.removeEventListener("updateend", done);
        this.sb.removeEventListener("error", fail);
        reject(e);
      }
    });
  }

  removeRange(from, to) {
    return new Promise((resolve) => {
      this.sb.addEventListener("updateend", resolve, { once: true });
      this.sb.remove(from, to);
    });
  }

  /** Whether the SourceBuffer holds the moment `t` (never, once the view is given up). */
  holds(t) {
    if (this.broken) return false;
    const b = this.sb.buffered;
    for (let k = 0; k < b.length; k++) if (b.start(k) <= t && t <= b.end(k)) return true;
    return false;
  }
}

/** Plays one recording (checked by the WebAssembly: `Keyring.checkRecording`): sealed objects
 * fetched around the playhead, opened in WASM, fed to MSE. A recording with a second camera
 * gets a second, muted `<video>` in `stage`, which follows the first. */
class Player {
  constructor(rec, video, stage, onError) {
    this.rec = rec;
    this.video = video;
    this.stage = stage;
    this.onError = onError;
    this.stopped = false;
    this.base = rec.objects;
    this.query = `?device=${encodeURIComponent(rec.device)}`;
    // Each fragment's place on the recording's timeline, as the check computed it.
    this.starts = rec.fragments.map((f) => f.start_secs);
    this.ends = rec.fragments.map((f) => f.end_secs);
    this.duration = rec.duration_secs;
    this.appended = new Set();
    /** Opened init segments by index: {plain, media, stream, mime, views, viewInits, viewMimes}. */
    this.inits = new Map();
    this.lanes = [];
    this.second = null;
    this.frameSecs = 1 / 25;
    this.wake = null;
    this.pumping = false;
  }

  async start() {
    // Every capture stream's init segment first (a few hundred bytes each): a second camera
    // in any of them gives the page its second view.
    const inits = await Promise.all(this.rec.inits.map((_, i) => this.openInit(i)));
    if (this.stopped) return;
    const first = inits[this.rec.fragments[0].init];
    this.lanes.push(new Lane(this.video, 0));
    if (inits.some((i) => i.views > 1)) {
      const second = el("video", { id: "video-2", "aria-label": `Second camera of ${this.rec.device}`, playsinline: true, preload: "auto" });
      second.muted = true;
      const gap = el("p", { class: "view-gap", id: "second-missing", hidden: true }, "The second camera was not recorded here.");
      this.second = { video: second, gap };
      this.stage.classList.add("two");
      this.stage.append(el("div", { class: "view" }, second, gap));
      this.lanes.push(new Lane(second, 1));
      this.follow(second);
    }
    const mimes = [first.views > 1 ? first.viewMimes[0] : first.mime];
    if (this.second) mimes.push(inits.find((i) => i.views > 1).viewMimes[1]);
    for (const lane of this.lanes) {
      await lane.open(mimes[lane.view], this.duration);
      if (this.stopped) return;
    }
    for (const ev of ["timeupdate", "seeking", "play", "ratechange"]) {
      this.video.addEventListener(ev, () => this.poke());
    }
    this.pump();
  }

  /** Keeps the second view on the first one's clock: it plays, pauses, seeks and changes speed
   * with it, and is put back when it drifts. */
  follow(second) {
    const v = this.video;
    v.addEventListener("play", () => {
      this.syncSecond(0.05);
      second.play().catch(() => {});
    });
    v.addEventListener("pause", () => {
      second.pause();
      this.syncSecond(0);
    });
    v.addEventListener("seeking", () => this.syncSecond(0));
    // The first view waiting for data holds the second, so it does not run ahead.
    v.addEventListener("waiting", () => second.pause());
    v.addEventListener("playing", () => {
      this.syncSecond(0.05);
      second.play().catch(() => {});
    });
    v.addEventListener("ratechange", () => (second.playbackRate = v.playbackRate));
    v.addEventListener("timeupdate", () => {
      this.syncSecond(v.paused ? 0 : 0.25);
      this.showGap();
    });
  }

  /** Moves the second view to the first one's time when they are more than `slack` apart.
   * The two cameras' frames do not fall on the same instants: where the second view's media
   * starts a frame or two after that time (the start of the recording, or of a capture
   * stream), it goes to its first frame instead, or it would wait there with nothing to show. */
  syncSecond(slack) {
    if (!this.second || this.lanes[1]?.broken) return;
    const second = this.second.video;
    let t = this.video.currentTime;
    const b = second.buffered;
    for (let k = 0; k < b.length; k++) {
      if (t >= b.start(k) && t <= b.end(k)) break;
      if (t < b.start(k) && b.start(k) - t < 0.25) {
        t = b.start(k);
        break;
      }
    }
    if (Math.abs(second.currentTime - t) > slack) second.currentTime = t;
  }

  /** Hides the second view, saying why, where it has nothing to show at the playhead (its
   * camera was missing then, or it could not be played), rather than a frame from elsewhere. */
  showGap() {
    if (!this.second) return;
    const lane = this.lanes[1];
    const t = this.video.currentTime;
    const i = this.starts.findIndex((s, k) => s <= t && t < this.ends[k]);
    const init = i < 0 ? null : this.inits.get(this.rec.fragments[i].init);
    let why = null;
    if (lane && lane.broken) why = `The second camera cannot be played: ${lane.broken}`;
    else if (init && init.views < 2) why = "The second camera was not recorded here.";
    else if (lane && this.appended.has(i) && !lane.holds(t)) why = "The second camera has no picture here.";
    this.second.gap.textContent = why || "";
    this.second.gap.hidden = !why;
    this.second.video.classList.toggle("absent", !!why);
  }

  stop() {
    this.stopped = true;
    this.poke();
    if (this.lanes.length) for (const lane of this.lanes) lane.close();
    else {
      this.video.removeAttribute("src");
      this.video.load();
    }
    // Their WebAssembly memory is not the garbage collector's to free.
    for (const init of this.inits.values()) init.media.free();
    this.inits.clear();
  }

  poke() {
    if (this.wake) {
      const w = this.wake;
      this.wake = null;
      w();
    }
  }

  objectUrl(name) {
    return `${this.base}${encodeURIComponent(name)}${this.query}`;
  }

  async fetchBytes(name) {
    const r = await api("GET", this.objectUrl(name), undefined, { raw: true });
    return new Uint8Array(await r.arrayBuffer());
  }

  /** Fetches and opens one object; `stream` checks a fragment against its init's. */
  async openEntry(kind, entry, stream) {
    const [sealed, record] = await Promise.all([this.fetchBytes(entry.file), this.fetchBytes(entry.key_file)]);
    // Signed out, or another view, while fetching: the keyring may be gone.
    if (this.stopped) throw new Error("stopped");
    return { plain: state.keyring.open(kind, sealed, record, entry.sha256, entry.key_sha256, stream), sealed };
  }

  async openInit(index) {
    if (this.inits.has(index)) return this.inits.get(index);
    const { plain, sealed } = await this.openEntry("init", this.rec.inits[index]);
    const media = new MediaInit(plain);
    if (this.stopped) {
      media.free();
      throw new Error("stopped");
    }
    const views = media.views();
    const viewInits = [];
    const viewMimes = [];
    for (let v = 0; views > 1 && v < views; v++) {
      viewInits.push(media.viewInit(v));
      viewMimes.push(media.viewMime(v));
    }
    const init = { plain, media, stream: Keyring.streamOf(sealed), mime: media.mime(), views, viewInits, viewMimes };
    if (this.inits.has(index)) {
      media.free();
      return this.inits.get(index);
    }
    this.inits.set(index, init);
    return init;
  }

  async openFragment(i) {
    const entry = this.rec.fragments[i];
    const init = await this.openInit(entry.init);
    const { plain } = await this.openEntry("fragment", entry, init.stream);
    return { plain, init, initIndex: entry.init };
  }

  /** The next fragment the playhead needs, or -1. */
  wanted() {
    const t = this.video.currentTime;
    for (let i = 0; i < this.starts.length; i++) {
      if (this.ends[i] <= t - 0.05 || this.starts[i] > t + AHEAD_SECS) continue;
      if (!this.appended.has(i)) return i;
    }
    return -1;
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.stopped) {
        await this.trim();
        const i = this.wanted();
        if (i < 0) {
          this.maybeEnd();
          await new Promise((r) => {
            this.wake = r;
            setTimeout(() => this.poke(), 1000);
          });
          continue;
        }
        const { plain, init, initIndex } = await this.openFragment(i);
        if (this.stopped) break;
        await this.append(i, plain, init, initIndex);
      }
    } catch (e) {
      if (!this.stopped) this.onError(e);
    } finally {
      this.pumping = false;
    }
  }

  async append(i, plain, init, initIndex) {
    const frame = init.media.frameSecs(plain);
    if (frame > 0 && frame <= 1) this.frameSecs = frame;
    // One offset for every view, from the whole fragment: the views keep their one clock.
    const offset = init.media.timestampOffset(plain, this.starts[i], this.ends[i]);
    for (const lane of this.lanes) {
      // This capture stream had no second camera, or the second view could not be played.
      if (lane.view >= init.views || lane.broken) continue;
      try {
        await this.appendTo(lane, i, plain, init, initIndex, offset);
      } catch (e) {
        // The second view costs the first nothing: it is given up, said over it.
        if (lane.view === 0) throw e;
        lane.broken = e.message;
        lane.held.clear();
        this.showGap();
      }
    }
    this.appended.add(i);
    this.syncSecond(0.05);
  }

  async appendTo(lane, i, plain, init, initIndex, offset) {
    const whole = init.views < 2;
    let laneOffset = offset;
    if (lane.view > 0) {
      const start = init.media.viewStartSecs(lane.view, plain);
      if (start === undefined) return; // no picture of this view in this fragment
      // A frame placed before 0 is dropped, and with it the frames that depend on it.
      laneOffset = Math.max(offset, -start);
    }
    const bytes = whole ? plain : init.media.viewFragment(lane.view, plain);
    if (lane.currentInit !== initIndex) {
      // A camera restart: the other stream's init segment first (its codecs may differ).
      const mime = whole ? init.mime : init.viewMimes[lane.view];
      if (lane.currentInit !== null && lane.sb.changeType) lane.sb.changeType(mime);
      await lane.appendBuffer(whole ? init.plain : init.viewInits[lane.view]);
      lane.currentInit = initIndex;
    }
    lane.sb.timestampOffset = laneOffset;
    try {
      await lane.appendBuffer(bytes);
    } catch (e) {
      if (e.name !== "QuotaExceededError") throw e;
      await this.trim(true);
      await lane.appendBuffer(bytes);
    }
    if (lane.holds((this.starts[i] + this.ends[i]) / 2)) lane.held.add(i);
  }

  /** Removes media far from the playhead (behind, and far ahead after a backward seek). */
  async trim(hard = false) {
    const t = this.video.currentTime;
    const behind = hard ? 2 : BEHIND_SECS;
    const ahead = hard ? AHEAD_SECS : AHEAD_SECS * 3;
    for (const lane of this.lanes) {
      // A given-up view's media source may be closed: it is touched no more.
      if (lane.broken) continue;
      const b = lane.sb.buffered;
      if (!b.length) continue;
      const lo = b.start(0);
      const hi = b.end(b.length - 1);
      const forget = (i) => {
        this.appended.delete(i);
        for (const l of this.lanes) l.held.delete(i);
      };
      if (lo < t - behind) {
        await lane.removeRange(0, Math.max(0, t - behind / 2));
        for (const i of this.appended) if (this.ends[i] <= t - behind / 2) forget(i);
      }
      if (hi > t + ahead) {
        await lane.removeRange(t + ahead, hi);
        for (const i of this.appended) if (this.starts[i] >= t + ahead) forget(i);
      }
    }
    // The browser may evict on its own: forget what a view held after its append and no
    // longer does. (Only what it held: a fragment a view could not use must not be fetched
    // again and again.)
    for (const i of this.appended) {
      const mid = (this.starts[i] + this.ends[i]) / 2;
      if (this.lanes.some((lane) => lane.held.has(i) && !lane.holds(mid))) {
        this.appended.delete(i);
        for (const lane of this.lanes) lane.held.delete(i);
      }
    }
  }

  /** Once the last fragment is in, tell the browser the stream ends (so playback can reach it). */
  maybeEnd() {
    const last = this.starts.length - 1;
    if (!this.appended.has(last)) return;
    for (const lane of this.lanes) {
      if (!lane.broken && lane.ms.readyState === "open" && !lane.sb.updating) {
        try {
          lane.ms.endOfStream();
        } catch (_) {
          // A concurrent update: try again on the next wake-up.
        }
      }
    }
  }
}

async function renderPlayer(id, device) {
  setView("player");
  const main = $("#main");
  main.replaceChildren(el("p", { class: "status", role: "status" }, "Opening the recording…"));
  const view = state.view;
  let rec;
  try {
    const answer = await api("GET", `/api/recordings/${encodeURIComponent(id)}${device ? `?device=${encodeURIComponent(device)}` : ""}`, undefined, { text: true });
    if (view !== state.view) return;
    // Parsed and checked once, in the WebAssembly: the same recording as asked for, sealed to
    // this key, each fragment's place computed; the page uses only what this gives.
    rec = JSON.parse(state.keyring.checkRecording(answer, id, device || undefined));
  } catch (e) {
    if (view !== state.view) return;
    main.replaceChildren(el("p", {}, el("a", { href: "/", onclick: (ev) => { ev.preventDefault(); navigate("/"); } }, "← All recordings")));
    showAlert(e.status === 409 ? `Not yet: ${e.message}` : `Cannot open the recording: ${e.message}`);
    return;
  }
  const preroll = rec.preroll_secs;
  const firstFrame = new Date(rec.first_frame_utc || new Date(new Date(rec.trigger_utc).getTime() - preroll * 1000).toISOString());

  const video = el("video", { id: "video", "aria-label": `Recording of ${rec.device}`, playsinline: true, preload: "auto" });
  const stage = el("div", { class: "stage" }, el("div", { class: "view" }, video));
  const sinceTrigger = el("output", { id: "since-trigger", "aria-label": "Time since the trigger" }, "–");
  const wall = el("output", { id: "wall-clock", "aria-label": "Wall-clock time" }, "–");
  const position = el("output", { id: "position", "aria-label": "Position" }, "–");
  const scrub = el("input", { id: "scrub", type: "range", min: "0", max: String(rec.duration_secs), step: "0.01", value: "0", "aria-label": "Seek" });
  const playBtn = el("button", { type: "button", id: "play", "aria-keyshortcuts": "Space k" }, "Play");
  const speed = el("select", { id: "speed", "aria-label": "Playback speed" }, ...[0.25, 0.5, 1, 1.5, 2, 4].map((r) => el("option", { value: String(r), selected: r === 1 }, `${r}×`)));
  const chapters = el("ol", { class: "chapters", id: "chapters", "aria-label": "Markers" });
  const markerRail = el("div", { class: "markers", "aria-hidden": "true" });
  const status = el("p", { class: "status", role: "status", "aria-live": "polite" });

  const seek = (t) => {
    video.currentTime = Math.max(0, Math.min(t, video.duration || rec.duration_secs));
  };
  const markers = rec.markers;
  for (const mk of markers) {
    const label = mk.label;
    const at = mk.offset_secs;
    const button = el("button", { type: "button", class: "chapter", "data-offset": at }, el("span", { class: "t" }, clock(at - preroll, { sign: true })), " ", el("span", { class: "label" }, label));
    button.addEventListener("click", () => seek(at));
    chapters.append(el("li", {}, button));
    const pin = el("span", { class: "pin", title: label });
    pin.style.left = `${(100 * at) / rec.duration_secs}%`;
    pin.append(el("span", { class: "pin-label" }, label));
    markerRail.append(pin);
  }

  const fromIn = el("input", { id: "from", type: "text", inputmode: "decimal", value: "0", size: "8" });
  const toIn = el("input", { id: "to", type: "text", inputmode: "decimal", value: String(rec.duration_secs), size: "8" });
  const dlStatus = el("p", { class: "status", role: "status", "aria-live": "polite", id: "download-status" });
  const download = el(
    "form",
    { class: "download", id: "download" },
    el("h3", {}, "Download"),
    el("p", { class: "hint" }, "Made in this browser from the sealed recording; the download is recorded in the audit log. Times in seconds from the start of the recording (or m:ss)."),
    el("label", { for: "from" }, "From"),
    fromIn,
    el("label", { for: "to" }, "To"),
    toIn,
    el("button", { type: "submit", id: "download-range" }, "Download range"),
    el("button", { type: "button", id: "download-whole" }, "Download whole recording"),
    dlStatus,
  );

  const back = el("a", { href: "/", onclick: (ev) => { ev.preventDefault(); navigate("/"); } }, "← All recordings");
  main.replaceChildren(
    el("p", {}, back),
    el("h2", {}, `${rec.device} · ${localTime(rec.trigger_utc)}`),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "Trigger"), el("dd", {}, rec.trigger),
      el("dt", {}, "Stop reason"), el("dd", {}, rec.stop_reason),
      el("dt", {}, "Status"), el("dd", {}, rec.status),
      el("dt", {}, "Duration"), el("dd", {}, clock(rec.duration_secs)),
      el("dt", {}, "Pre-roll"), el("dd", {}, clock(preroll)),
    ),
    stage,
    el("div", { class: "timeline" }, scrub, markerRail),
    el(
      "div",
      { class: "controls", role: "group", "aria-label": "Player controls" },
      playBtn,
      el("button", { type: "button", id: "frame-back", "aria-keyshortcuts": ",", title: "Previous frame (,)" }, "◀ frame"),
      el("button", { type: "button", id: "frame-next", "aria-keyshortcuts": ".", title: "Next frame (.)" }, "frame ▶"),
      el("button", { type: "button", id: "next-marker", "aria-keyshortcuts": "m", title: "Next marker (M)" }, "Next marker"),
      el("label", { for: "speed" }, "Speed"),
      speed,
      el("span", { class: "clock" }, "Since trigger ", sinceTrigger),
      el("span", { class: "clock" }, "Wall clock ", wall),
      el("span", { class: "clock" }, "Position ", position),
    ),
    status,
    el("h3", {}, "Markers"),
    markers.length ? chapters : el("p", { class: "muted" }, "No markers."),
    ...(rec.markers_left_out ? [el("p", { class: "muted" }, `${rec.markers_left_out} more markers in the manifest are not shown (outside the recording, or beyond the first ${markers.length}).`)] : []),
    download,
    el(
      "details",
      { class: "keys" },
      el("summary", {}, "Keyboard shortcuts"),
      el(
        "dl",
        {},
        ...[
          ["Space or K", "play / pause"],
          ["L", "play; again: faster (up to 4×)"],
          ["J", "slower; at 1× or paused: back 5 s"],
          ["← / →", "back / forward 5 s (with Shift: 1 s)"],
          [", / .", "previous / next frame"],
          ["Home / End", "start / end"],
          ["M / Shift+M", "next / previous marker"],
        ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
      ),
    ),
  );

  const fail = (e) => {
    status.textContent = "";
    showAlert(`Playback stopped: ${e.message}`);
  };
  const player = new Player(rec, video, stage, fail);
  state.player = player;

  const frameStep = (dir) => {
    video.pause();
    seek(video.currentTime + dir * player.frameSecs);
  };
  const nextMarker = (dir) => {
    const t = video.currentTime;
    const list = dir > 0 ? markers.filter((x) => x.offset_secs > t + 0.05) : markers.filter((x) => x.offset_secs < t - 0.5).reverse();
    if (list.length) seek(list[0].offset_secs);
  };
  const togglePlay = () => (video.paused ? video.play().catch(fail) : video.pause());
  playBtn.addEventListener("click", togglePlay);
  $("#frame-back").addEventListener("click", () => frameStep(-1));
  $("#frame-next").addEventListener("click", () => frameStep(1));
  $("#next-marker").addEventListener("click", () => nextMarker(1));
  speed.addEventListener("change", () => {
    video.playbackRate = Number(speed.value);
  });
  video.addEventListener("ratechange", () => {
    speed.value = String(video.playbackRate);
  });
  scrub.addEventListener("input", () => seek(Number(scrub.value)));
  const tick = () => {
    const t = video.currentTime;
    sinceTrigger.textContent = clock(t - preroll, { sign: true, tenths: true });
    wall.textContent = localTime(new Date(firstFrame.getTime() + t * 1000).toISOString(), false);
    position.textContent = `${clock(t, { tenths: true })} / ${clock(video.duration)}`;
    if (document.activeElement !== scrub) scrub.value = String(t);
    playBtn.textContent = video.paused ? "Play" : "Pause";
    for (const b of chapters.querySelectorAll("button")) {
      const at = Number(b.dataset.offset);
      b.classList.toggle("passed", at <= t + 0.05);
    }
  };
  for (const ev of ["timeupdate", "seeked", "play", "pause", "durationchange", "loadedmetadata"]) video.addEventListener(ev, tick);

  player.keys = (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const tag = ev.target && ev.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const k = ev.key;
    if ((k === " " || k === "Enter") && tag === "BUTTON") return;
    const handled = {
      " ": togglePlay,
      k: togglePlay,
      K: togglePlay,
      l: () => (video.paused ? video.play().catch(fail) : (video.playbackRate = Math.min(4, video.playbackRate * 2))),
      L: () => (video.paused ? video.play().catch(fail) : (video.playbackRate = Math.min(4, video.playbackRate * 2))),
      j: () => (!video.paused && video.playbackRate > 1 ? (video.playbackRate /= 2) : seek(video.currentTime - 5)),
      J: () => (!video.paused && video.playbackRate > 1 ? (video.playbackRate /= 2) : seek(video.currentTime - 5)),
      ArrowLeft: () => seek(video.currentTime - (ev.shiftKey ? 1 : 5)),
      ArrowRight: () => seek(video.currentTime + (ev.shiftKey ? 1 : 5)),
      ",": () => frameStep(-1),
      ".": () => frameStep(1),
      Home: () => seek(0),
      End: () => seek(video.duration || rec.duration_secs),
      m: () => nextMarker(1),
      M: () => nextMarker(ev.shiftKey ? -1 : 1),
    }[k];
    if (handled) {
      ev.preventDefault();
      handled();
    }
  };
  document.addEventListener("keydown", player.keys);
  const stop = player.stop.bind(player);
  player.stop = () => {
    document.removeEventListener("keydown", player.keys);
    stop();
  };

  const runDownload = async (from, to) => {
    dlStatus.textContent = "Recording the download in the audit log…";
    showAlert("");
    try {
      await downloadRange(rec, from, to, (msg) => (dlStatus.textContent = msg));
    } catch (e) {
      dlStatus.textContent = "";
      showAlert(`Download failed: ${e.message}`);
    }
  };
  download.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const from = parseTime(fromIn.value);
    const to = parseTime(toIn.value);
    if (!(from >= 0 && to > from)) {
      showAlert("Give a range: From before To, in seconds or m:ss.");
      return;
    }
    runDownload(from, Math.min(to, rec.duration_secs));
  });
  $("#download-whole").addEventListener("click", () => runDownload(0, rec.duration_secs));

  status.textContent = "Opening the first fragments…";
  try {
    await player.start();
    status.textContent = "";
  } catch (e) {
    // A player stopped by another view or a sign-out says nothing on the view that follows.
    if (!player.stopped) fail(e);
  }
  if (!player.stopped) video.focus();
}

function parseTime(s) {
  const parts = String(s).trim().split(":").map(Number);
  if (!parts.length || parts.some((p) => !Number.isFinite(p))) return NaN;
  return parts.reduce((acc, p) => acc * 60 + p, 0);
}

/** Audits, then builds the MP4 of `from..to` in WASM, one file per capture stream. */
async function downloadRange(rec, from, to, say) {
  const q = `?device=${encodeURIComponent(rec.device)}`;
  await api("POST", `/api/recordings/${encodeURIComponent(rec.id)}/download${q}`, { from_secs: from, to_secs: to });
  const fetchBytes = async (name) => {
    const r = await api("GET", `${rec.objects}${encodeURIComponent(name)}${q}`, undefined, { raw: true });
    return new Uint8Array(await r.arrayBuffer());
  };
  const keyring = state.keyring;
  const open = async (kind, e, stream) => {
    const [sealed, record] = await Promise.all([fetchBytes(e.file), fetchBytes(e.key_file)]);
    // Signed out (the keyring freed) while fetching: stop here.
    if (state.keyring !== keyring) throw new Error("signed out");
    return { plain: keyring.open(kind, sealed, record, e.sha256, e.key_sha256, stream), sealed };
  };
  const placed = rec.fragments.map((f) => ({ f, start: f.start_secs, end: f.end_secs }));
  const streams = [...new Set(placed.filter((p) => p.end > from && p.start < to).map((p) => p.f.init))];
  const base = `${rec.device}-${rec.trigger_utc}`.replace(/[^A-Za-z0-9._-]/g, "_");
  const whole = from <= 0 && to >= rec.duration_secs;
  for (const [n, initIndex] of streams.entries()) {
    const pieces = placed.filter((p) => p.f.init === initIndex && p.end > from && p.start < to);
    say(`Opening the init segment of stream ${n + 1} of ${streams.length}…`);
    const init = await open("init", rec.inits[initIndex]);
    const stream = Keyring.streamOf(init.sealed);
    const dl = new Download(
      init.plain,
      pieces[0].start,
      Math.max(from, pieces[0].start),
      Math.min(to, pieces[pieces.length - 1].end),
      Float64Array.from(rec.markers.map((mk) => mk.offset_secs)),
      rec.markers.map((mk) => mk.label),
    );
    try {
      // Two passes, as `neoflix export` does: the first indexes every fragment and keeps none,
      // the second opens each again and keeps only what it adds to the file, each piece its
      // own Blob (which the browser may keep on disk). So a long recording never needs all its
      // decrypted fragments in the tab's memory at once, let alone twice.
      const where = streams.length > 1 ? ` (stream ${n + 1})` : "";
      for (const [k, p] of pieces.entries()) {
        say(`Indexing fragment ${k + 1} of ${pieces.length}${where}…`);
        dl.push((await open("fragment", p.f, stream)).plain);
      }
      dl.finish();
      const parts = [new Blob([dl.head()])];
      for (const [k, p] of pieces.entries()) {
        say(`Writing fragment ${k + 1} of ${pieces.length}${where}…`);
        parts.push(new Blob([dl.media(k, (await open("fragment", p.f, stream)).plain)]));
      }
      const suffix = (whole ? "" : `-${Math.round(from)}s-${Math.round(to)}s`) + (streams.length > 1 ? `-stream${n + 1}` : "");
      save(new Blob(parts, { type: "video/mp4" }), `${base}${suffix}.mp4`);
      save(new Blob([dl.webvttChapters()], { type: "text/vtt" }), `${base}${suffix}.chapters.vtt`);
    } finally {
      dl.free();
    }
  }
  say(`Downloaded ${streams.length > 1 ? `${streams.length} files (one per camera stream)` : "the file"}.`);
}

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- start --------------------------------------------------------------------------------

async function main() {
  // The page must need nothing the Content-Security-Policy forbids; count what it blocks so
  // that the browser test can see a violation.
  document.addEventListener("securitypolicyviolation", (ev) => {
    document.body.dataset.cspViolations = String(Number(document.body.dataset.cspViolations || 0) + 1);
    console.error(`blocked by the Content-Security-Policy: ${ev.violatedDirective} ${ev.blockedURI}`);
  });
  $("#signout").addEventListener("click", signOut);
  $("#home").addEventListener("click", (ev) => {
    ev.preventDefault();
    if (state.user) navigate("/");
  });
  for (const [id, path] of [["#nav-recordings", "/"], ["#nav-audit", "/audit"]]) {
    $(id).addEventListener("click", (ev) => {
      ev.preventDefault();
      if (state.user) navigate(path);
    });
  }
  window.addEventListener("popstate", route);
  try {
    await init();
  } catch (e) {
    showAlert(`This browser cannot run the review page's WebAssembly: ${e.message}`);
    return;
  }
  route();
}

main();
