// The JSON API client. The panel is served at <prefix>/, so the API lives at <prefix>/api/…;
// the prefix is read from the page's own path and never hard-coded.

/** BASE is the panel's own path, e.g. "/admin/". */
export const BASE = location.pathname.replace(/[^/]*$/, '');

/** ApiError carries the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }

  /** fields returns the server's field violations as {field: description}, if any. */
  fields() {
    const out = {};
    const details = this.body && this.body.error && this.body.error.details;
    if (Array.isArray(details)) {
      for (const d of details) {
        for (const v of (d && d.fieldViolations) || []) if (v && v.field) out[v.field] = v.description || 'is not valid';
      }
    }
    return out;
  }
}

const listeners = new Set();

/** onUnauthorized registers fn to run whenever the API answers 401 (the session is gone). */
export function onUnauthorized(fn) { listeners.add(fn); }

function url(path, query) {
  const u = new URL(BASE + 'api/' + path.replace(/^\//, ''), location.origin);
  if (query) {
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === '') continue;
      u.searchParams.set(k, String(v));
    }
  }
  return u.pathname + u.search;
}

async function errorFrom(res) {
  let body = null;
  let msg = '';
  try {
    const text = await res.text();
    try {
      body = JSON.parse(text);
      msg = (body && body.error && (body.error.message || body.error.status)) || body.message || '';
    } catch (e) {
      msg = text.slice(0, 300);
    }
  } catch (e) { /* no body */ }
  if (!msg) msg = `${res.status} ${res.statusText || 'error'}`;
  if (res.status === 429) {
    const ra = res.headers.get('Retry-After');
    if (ra) msg += ` Try again in ${ra} s.`;
  }
  return new ApiError(res.status, msg, body);
}

/**
 * api calls the admin API. opts: method, body (JSON-encoded), query, raw (return the
 * Response instead of parsing JSON), signal, auth401 (false: a 401 is an ordinary error, as
 * on the sign-in form).
 */
export async function api(path, opts = {}) {
  const { method = 'GET', body, query, raw = false, signal, auth401 = true } = opts;
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' }, signal, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url(path, query), init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The gateway cannot be reached. Check your connection.');
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401 && auth401) for (const fn of listeners) fn(err);
    throw err;
  }
  if (raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch (e) { return text; }
}

export const get = (path, query, opts) => api(path, Object.assign({ query }, opts));
export const post = (path, body, opts) => api(path, Object.assign({ method: 'POST', body }, opts));
export const put = (path, body, opts) => api(path, Object.assign({ method: 'PUT', body }, opts));
export const del = (path, opts) => api(path, Object.assign({ method: 'DELETE' }, opts));
