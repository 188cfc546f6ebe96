// The HTTP API client: base URL and key from /app-config.json (or this install's own key), typed errors.
// Every API error arrives as {code, message}; a failure to reach the server becomes code "network".

const KEY_STORAGE = "faceedit.apiKey";

export class ApiError extends Error {
  constructor(code, message, { status = 0, retryAfter = null } = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from Retry-After on 429/503
  }
}

const config = { apiBase: "", devKey: null, linkKey: null, limits: {}, workerInversions: null };

/**
 * Read /app-config.json and a `#key=...` install link (the fragment never reaches a server). A link is
 * how an install gets its first key; a link that would *replace* the key already stored is held back
 * (`linkKey()`) until the person agrees, or anyone could send a link that routes their photos to
 * someone else's account.
 */
export async function loadConfig() {
  readKeyLink();
  try {
    const response = await fetch("/app-config.json", { cache: "no-store" });
    if (response.ok) {
      const body = await response.json();
      config.apiBase = apiRoot(body.api_base || "/");
      config.devKey = body.dev_api_key || null;
      config.limits = body.limits || {};
      config.workerInversions = Array.isArray(body.worker_inversions) ? body.worker_inversions : null;
    }
  } catch {
    // Offline: keep the defaults (same origin); requests will report "network" themselves.
  }
  if (!config.apiBase) config.apiBase = location.origin;
  return { apiBase: config.apiBase, hasDevKey: Boolean(config.devKey) };
}

/**
 * What an edit may ask for on this server (`limits` of /app-config.json: max_changes, max_text_chars, weight
 * [min, max], ...); empty until loadConfig() read it, or when offline (the server still checks every edit).
 */
export const limits = () => config.limits;

/**
 * The inversions every live edit worker offers now (/app-config.json's `worker_inversions`), or null while the
 * server does not know yet (its workers are starting): then any of `limits().inversions` may be asked for.
 */
export const workerInversions = () => config.workerInversions;

/** `api_base` may be relative ("/v1") or absolute ("https://api.example.com/v1"); paths here start with /v1. */
function apiRoot(apiBase) {
  const absolute = new URL(apiBase, location.href);
  return (absolute.origin + absolute.pathname).replace(/\/+$/, "").replace(/\/v1$/, "");
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || config.devKey || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key.trim());
  else localStorage.removeItem(KEY_STORAGE);
}

/** Take a `#key=...` link out of the address (and history): a first key is stored, a different one waits. */
export function readKeyLink() {
  const fromLink = (new URLSearchParams(location.hash.slice(1)).get("key") || "").trim();
  if (!fromLink) return;
  history.replaceState(null, "", location.pathname + location.search + "#create");
  const stored = localStorage.getItem(KEY_STORAGE);
  if (!stored) setApiKey(fromLink);
  else if (stored !== fromLink) config.linkKey = fromLink;
}

/** A key from a link that waits for the person's yes before it replaces the stored one (or null). */
export function linkKey() {
  return config.linkKey;
}

/** Settle the pending link key: `accept` stores it, otherwise the current key stays. */
export function settleLinkKey(accept) {
  if (accept && config.linkKey) setApiKey(config.linkKey);
  config.linkKey = null;
}

export function keySource() {
  if (localStorage.getItem(KEY_STORAGE)) return "install";
  return config.devKey ? "dev" : "none";
}

function url(path) {
  return path.startsWith("http") ? path : config.apiBase + path;
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Seconds from a Retry-After header value (null when absent or an HTTP date). */
function retryAfterOf(header) {
  const value = Number(header);
  return header && Number.isFinite(value) && value > 0 ? value : null;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's HTML page): fall back to the status.
  }
  const code = body && typeof body.code === "string" ? body.code : statusCode(response.status);
  const message = body && body.message ? body.message : response.statusText || `HTTP ${response.status}`;
  const retryAfter = retryAfterOf(response.headers.get("Retry-After"));
  return new ApiError(code, message, { status: response.status, retryAfter });
}

function statusCode(status) {
  return { 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "image_too_large",
           415: "unsupported_format", 429: "rate_limited", 503: "unavailable" }[status] || "internal_error";
}

/** JSON request to the API; resolves to the parsed body (null for 204), rejects with ApiError. */
export async function request(method, path, { json, headers = {}, signal } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url(path), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("network", "Could not reach the server.");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

/**
 * Upload a photo with POST /v1/images (multipart). XMLHttpRequest, not fetch: only it reports upload progress.
 * Returns {promise, abort}; onProgress(fraction) is called as bytes leave the device.
 */
export function uploadImage(blob, filename, onProgress) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", url("/v1/images"));
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "text";
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300 && body) return resolve(body);
      const code = body && body.code ? body.code : statusCode(xhr.status);
      const message = body && body.message ? body.message : `HTTP ${xhr.status}`;
      reject(new ApiError(code, message, { status: xhr.status,
                                           retryAfter: retryAfterOf(xhr.getResponseHeader("Retry-After")) }));
    };
    xhr.onerror = () => reject(new ApiError("network", "The upload could not reach the server."));
    xhr.onabort = () => reject(new ApiError("canceled", "Upload canceled."));
    const form = new FormData();
    form.append("file", blob, filename);
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

export const createEdit = (params) => request("POST", "/v1/edits", { json: params });
export const getEdit = (id, options) => request("GET", `/v1/edits/${encodeURIComponent(id)}`, options);
export const cancelEdit = (id) => request("POST", `/v1/edits/${encodeURIComponent(id)}/cancel`);
export const getImage = (id) => request("GET", `/v1/images/${encodeURIComponent(id)}`);
export const deleteImage = (id) => request("DELETE", `/v1/images/${encodeURIComponent(id)}`);

/**
 * Fetch a result image or stored photo as a Blob. Same-origin API URLs need the key; presigned storage URLs must not get it
 * (S3 rejects a second auth scheme), and a bucket without CORS can only be shown by URL: then resolve null.
 */
export async function fetchFile(outputUrl) {
  const absolute = new URL(outputUrl, config.apiBase + "/");
  const root = new URL(config.apiBase);
  const isApi = [root.origin, location.origin].includes(absolute.origin)
    && absolute.pathname.startsWith(`${root.pathname.replace(/\/$/, "")}/v1/`);
  let response;
  try {
    response = await fetch(absolute, { headers: isApi ? authHeaders() : {} });
  } catch (err) {
    if (isApi) throw new ApiError("network", "Could not download the result.");
    return null; // cross-origin storage without CORS: the caller falls back to the URL itself
  }
  if (!response.ok) throw await errorFrom(response);
  return response.blob();
}
