// iheardAI browser tracker: an ES module, no build step.
//
//   <script type="module">
//     import { init, trackEvent } from "https://collector.example/tracker.js";
//     init({ endpoint: "https://collector.example/api/analytics", userId: currentUser?.id });
//     trackEvent({ type: "widget_open", interaction_type: "click", element_id: "chat-button",
//                  element_class: "widget-trigger" });
//   </script>
//
// trackEvent() builds the payload of the integration guide (page, screen, viewport, widget, time on page,
// element, coordinates, timezone...), adds an event_id (the pipelines dedupe on it) and queues it. Events
// leave in batches (a JSON array, up to `batchSize`, at most every `flushIntervalMs`) with fetch; failed
// batches (network error, 429, 5xx) are retried with exponential backoff and jitter (Retry-After honoured);
// a 400/413 batch is dropped with a console warning (the collector says why). When the page is hidden or
// closed (visibilitychange/pagehide) a `frontend.session_analytics` summary is queued and everything left is
// sent with navigator.sendBeacon (text/plain: no CORS preflight), falling back to fetch keepalive.
// The session id lives in sessionStorage (one per tab session), like the session's counters.

const STORE = "iheardai.analytics.";
const DEFAULTS = {
  endpoint: "/api/analytics",
  widgetId: "sales-assistant",
  userId: null,
  accountId: null,
  batchSize: 20,
  flushIntervalMs: 2000,
  maxQueue: 1000,
  maxRetries: 8,
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  autoPageView: true,
  geo: null, // e.g. { country: "US" } if the page knows it
};
const BEACON_MAX_BYTES = 60000; // browsers cap a page's in-flight beacon data at 64 KiB

let cfg = { ...DEFAULTS };
let queue = [];
let timer = null;
let inFlight = false;
let attempt = 0;
let started = false;
let hiddenSent = false;
const pageLoadTime = Math.round(performance.timeOrigin || Date.now());
export const stats = { queued: 0, sent: 0, retried: 0, dropped: 0, beacons: 0 };

function storage() {
  try {
    return window.sessionStorage;
  } catch (e) {
    return null; // storage disabled: a per-page session
  }
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const memory = {};
function get(name) {
  const s = storage();
  return s ? s.getItem(STORE + name) : memory[name] ?? null;
}
function set(name, value) {
  const s = storage();
  if (s) s.setItem(STORE + name, String(value));
  else memory[name] = String(value);
}
function bump(name) {
  set(name, Number(get(name) || 0) + 1);
}

/** The tab session's id: created on first use, kept in sessionStorage. */
export function sessionId() {
  let id = get("session_id");
  if (!id) {
    id = uuid();
    set("session_id", id);
    set("started_at_ms", Date.now());
    set("landing_page", location.href);
    set("referrer", document.referrer || "");
  }
  return id;
}

export function identify(userId) {
  cfg.userId = userId;
}

/** Options: see DEFAULTS. Call once, before or after the first trackEvent. */
export function init(options = {}) {
  cfg = { ...cfg, ...options };
  sessionId();
  if (!started) {
    started = true;
    addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") onHide();
      else hiddenSent = false;
    });
    addEventListener("pagehide", onHide);
    addEventListener("online", () => schedule(0));
    if (cfg.autoPageView) trackEvent({ type: "page_view", interaction_type: "navigation" });
  }
}

function clean(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

/** Track one event, the integration guide's way: trackEvent({ type, interaction_type, element_id, ... }).
 * Returns a promise that resolves once the event is queued (it never rejects). */
export function trackEvent(eventData = {}) {
  if (!started) init();
  const { type, coordinates, ...extra } = eventData;
  const body = clean({
    ...extra,
    event_type: type,
    event_id: uuid(),
    session_id: sessionId(),
    user_id: cfg.userId ?? undefined,
    account_id: cfg.accountId ?? undefined,
    page_url: window.location.href,
    page_title: document.title,
    referrer: document.referrer,
    user_agent: navigator.userAgent,
    screen_resolution: `${screen.width}x${screen.height}`,
    viewport_size: `${window.innerWidth}x${window.innerHeight}`,
    widget_id: extra.widget_id ?? cfg.widgetId,
    interaction_type: eventData.interaction_type,
    timestamp: Date.now(),
    time_on_page: Math.floor((Date.now() - pageLoadTime) / 1000),
    click_coordinates: coordinates,
    country: cfg.geo?.country,
    timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
  });
  if (type === "page_view") bump("page_views");
  else bump("interactions");
  if (type === "widget_open") bump("widget_opens");
  if (type === "message_sent" || type === "user_message") bump("messages_sent");
  enqueue(body);
  return Promise.resolve();
}

function enqueue(body) {
  if (queue.length >= cfg.maxQueue) {
    queue.shift();
    stats.dropped++;
  }
  queue.push(body);
  stats.queued++;
  if (queue.length >= cfg.batchSize) schedule(0);
  else schedule(cfg.flushIntervalMs);
}

function schedule(delayMs) {
  if (timer !== null) {
    if (delayMs > 0) return; // a flush is already due
    clearTimeout(timer);
  }
  timer = setTimeout(() => {
    timer = null;
    flush();
  }, delayMs);
}

function backoffMs(retryAfter) {
  const exp = Math.min(cfg.backoffMaxMs, cfg.backoffBaseMs * 2 ** attempt);
  const jittered = exp / 2 + Math.random() * (exp / 2);
  const server = retryAfter && /^\d+$/.test(retryAfter) ? Number(retryAfter) * 1000 : 0;
  return Math.max(jittered, server);
}

/** Send what is queued now (fetch). Resolves when the batch was answered or rescheduled. */
export async function flush() {
  if (inFlight || queue.length === 0) return;
  const batch = queue.splice(0, cfg.batchSize);
  inFlight = true;
  let retry = false;
  let retryAfter = null;
  try {
    const r = await fetch(cfg.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(batch),
      keepalive: true,
      credentials: "omit",
    });
    if (r.status === 202 || r.ok) {
      stats.sent += batch.length;
      attempt = 0;
    } else if (r.status === 429 || r.status >= 500) {
      retry = true;
      retryAfter = r.headers.get("Retry-After");
    } else {
      stats.dropped += batch.length; // 400 / 413: retrying cannot help
      console.warn("iheardai analytics: batch refused", r.status, await r.text().catch(() => ""));
    }
  } catch (e) {
    retry = true; // offline, DNS, connection refused
  } finally {
    inFlight = false;
  }
  if (retry) {
    if (attempt >= cfg.maxRetries) {
      stats.dropped += batch.length;
      attempt = 0;
    } else {
      queue = batch.concat(queue);
      stats.retried += batch.length;
      const wait = backoffMs(retryAfter);
      attempt++;
      if (timer !== null) clearTimeout(timer); // the backoff replaces any pending flush
      timer = setTimeout(() => {
        timer = null;
        flush();
      }, wait);
    }
  } else if (queue.length) {
    schedule(queue.length >= cfg.batchSize ? 0 : cfg.flushIntervalMs);
  }
}

function sessionSummary() {
  const started = Number(get("started_at_ms") || pageLoadTime);
  const now = Date.now();
  const params = new URLSearchParams(location.search);
  const pageViews = Number(get("page_views") || 0);
  const interactions = Number(get("interactions") || 0);
  return clean({
    event_type: "frontend.session_analytics",
    event_id: uuid(),
    session_id: sessionId(),
    user_id: cfg.userId ?? undefined,
    account_id: cfg.accountId ?? undefined,
    page_url: location.href,
    user_agent: navigator.userAgent,
    timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    country: cfg.geo?.country,
    started_at_ms: started,
    ended_at_ms: now,
    duration_ms: Math.max(0, now - started),
    page_views: pageViews,
    interactions,
    widget_opens: Number(get("widget_opens") || 0),
    messages_sent: Number(get("messages_sent") || 0),
    landing_page: get("landing_page") || undefined,
    exit_page: location.href,
    referrer: get("referrer") || undefined,
    utm_source: params.get("utm_source") ?? undefined,
    utm_medium: params.get("utm_medium") ?? undefined,
    utm_campaign: params.get("utm_campaign") ?? undefined,
    is_bounce: pageViews <= 1 && interactions === 0,
    timestamp: now,
  });
}

function onHide() {
  if (hiddenSent) return;
  hiddenSent = true;
  enqueue(sessionSummary());
  clearTimeout(timer);
  timer = null;
  // everything left, in beacon-sized chunks; a refused beacon falls back to fetch keepalive
  while (queue.length) {
    let n = Math.min(queue.length, cfg.batchSize);
    let payload = JSON.stringify(queue.slice(0, n));
    while (payload.length > BEACON_MAX_BYTES && n > 1) {
      n = Math.ceil(n / 2);
      payload = JSON.stringify(queue.slice(0, n));
    }
    const batch = queue.splice(0, n);
    const blob = new Blob([payload], { type: "text/plain;charset=UTF-8" });
    if (navigator.sendBeacon && navigator.sendBeacon(cfg.endpoint, blob)) {
      stats.beacons++;
      stats.sent += batch.length;
    } else {
      fetch(cfg.endpoint, { method: "POST", body: payload, keepalive: true, credentials: "omit",
                            headers: { "Content-Type": "text/plain;charset=UTF-8" } }).catch(() => {});
    }
  }
}
