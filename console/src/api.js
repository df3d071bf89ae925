// The one way the console talks to Keel: the same HTTP API and bearer token as any client, on the origin that
// serves the console. Error answers become a Problem with the API's pointers, so forms can show them in place.

const TOKEN_KEY = 'keel.console.token';
/** Where the event stream is: the API's origin unless the deployment serves it elsewhere (a Lambda Function URL). */
let streamBase = '/';
/** The deployment's OIDC issuer and the console's client id there, when sign-in through it is configured. */
let oidcConfig = null;

/** Reads the console's configuration from the function that serves it. */
export async function loadConfig() {
  const response = await fetch('/console/config.json');
  if (response.ok) {
    const config = await response.json();
    if (config.events_stream_base) streamBase = config.events_stream_base;
    oidcConfig = config.oidc || null;
  }
}

export function oidc() {
  return oidcConfig;
}

export class Problem extends Error {
  constructor(status, body) {
    const detail = (body && (body.detail || body.message)) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = (body && body.code) || '';
    this.pointer = (body && body.pointer) || '';
    this.errors = (body && body.errors) || (this.pointer ? [{ pointer: this.pointer, message: detail }] : []);
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The token's claims (unverified: the API verifies; the console only decides what to show). */
export function claims() {
  const part = token().split('.')[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const parsed = JSON.parse(json);
    const roles = Array.isArray(parsed.roles) ? parsed.roles : String(parsed.roles || '').split(/[ ,]+/).filter(Boolean);
    return { user: parsed.sub || '', org: parsed.org_id || '', roles, exp: parsed.exp || 0 };
  } catch {
    return null;
  }
}

export function isAdmin(who = claims()) {
  return Boolean(who && who.roles.includes('platform-admin'));
}

/** Calls the API; resolves with { status, data, headers } for answers below 400, rejects with a Problem. */
export async function api(path, { method = 'GET', body, headers = {}, signal } = {}) {
  const sent = { authorization: `Bearer ${token()}`, ...headers };
  if (body !== undefined) sent['content-type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (response.status >= 400) throw new Problem(response.status, data);
  return { status: response.status, data, headers: response.headers };
}

/** A query string of the non-empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/**
 * Reads the organization's event stream (Server-Sent Events) with the bearer token, which the browser's
 * EventSource cannot send, and calls `onEvent` with each event's parsed data. Reconnects after a drop, resuming
 * after the last id seen. Returns a function that stops it.
 */
export function stream(onEvent, onState = () => {}) {
  const controller = new AbortController();
  let lastId = '';
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const headers = { authorization: `Bearer ${token()}`, accept: 'text/event-stream' };
        if (lastId) headers['last-event-id'] = lastId;
        const response = await fetch(`${streamBase}v1/events/stream`, { headers, signal: controller.signal });
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
        onState('live');
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let data = '';
            for (const line of frame.split('\n')) {
              if (line.startsWith('id:')) lastId = line.slice(3).trim();
              else if (line.startsWith('data:')) data += line.slice(5).trim();
            }
            if (data) {
              try {
                onEvent(JSON.parse(data));
              } catch {
                // A frame that is not JSON is not an event.
              }
            }
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      onState('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
  run();
  return () => controller.abort();
}
