// The service's REST API as the page uses it, and the one place that holds the API key.
//
// Promises: the key lives only in this tab's sessionStorage (gone when the tab closes) and
// leaves the page only in the Authorization header: never in a URL, a log line or the DOM.
// Every failure is an ApiError carrying the service's typed error ({type, message, request_id}).
import { EventSourceParserStream } from "./vendor/eventsource-parser/stream.js";

const KEY_SLOT = "recagent.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY_SLOT),
  signIn: (key) => sessionStorage.setItem(KEY_SLOT, key),
  signOut: () => sessionStorage.removeItem(KEY_SLOT),
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the service answered ${status}`);
    this.status = status;
    this.type = error.type || "http_error";
    this.requestId = error.request_id || null;
  }
}

function headers(extra = {}) {
  const key = session.key();
  if (!key) throw new ApiError(401, { error: { type: "unauthenticated", message: "sign in with an API key first" } });
  return { Authorization: `Bearer ${key}`, Accept: "application/json", ...extra };
}

async function send(method, path, body, extraHeaders) {
  const init = { method, headers: headers(extraHeaders), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let payload = null;
    try { payload = await response.json(); } catch { /* not JSON: keep the status */ }
    throw new ApiError(response.status, payload);
  }
  return response;
}

/** GET/POST a JSON endpoint; resolves to the parsed body. */
export async function call(method, path, body, extraHeaders) {
  return (await send(method, path, body, extraHeaders)).json();
}

/** A path under /v1/users/{id}/ with the id encoded (ids may hold any character). */
export function userPath(userId, rest = "") {
  return `/v1/users/${encodeURIComponent(userId)}${rest}`;
}

/** A fresh Idempotency-Key, so a retried click is counted once by the service. */
export function idempotencyKey(prefix) {
  return `${prefix}-${crypto.randomUUID()}`;
}

/**
 * POST and read the answer as Server-Sent Events, yielding {event, data} as each arrives.
 * EventSource cannot POST or send headers, so this is fetch + the body's ReadableStream,
 * parsed by the eventsource-parser library (vendored, see vendor/eventsource-parser).
 */
export async function* stream(path, body) {
  const response = await send("POST", path, body, { Accept: "text/event-stream" });
  const reader = response.body
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield { event: value.event || "message", data: value.data ? JSON.parse(value.data) : null };
    }
  } finally {
    reader.releaseLock();
  }
}
