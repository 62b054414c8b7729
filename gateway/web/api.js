// The gateway's API from the page: every request carries the API key (when one is set), and every
// error answer becomes an ApiError with the gateway's own message ({"error": {"code", "message"}}).

const KEY_STORAGE = "prodseg.apiKey"; // sessionStorage only: the key dies with the tab

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError(0, "network", `the gateway cannot be reached: ${error.message}`);
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: fall back to the status line below
    }
    const error = body && body.error;
    const message = error && error.message ? error.message : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, error && error.code ? error.code : `http_${response.status}`, message);
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postForm(path, form) {
  return (await request(path, { method: "POST", body: form })).json();
}

// A URL the browser can load in <video> or <a download>: the plain URL when no key is needed,
// otherwise the bytes fetched with the key, as an object URL (the same bytes: no re-encode).
export async function fetchableUrl(path) {
  if (!apiKey()) return path;
  const blob = await (await request(path)).blob();
  return URL.createObjectURL(blob);
}
