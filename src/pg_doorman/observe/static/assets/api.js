// Talking to the pooler's JSON API: HTTP Basic credentials from the login form, kept in sessionStorage (gone when
// the tab closes), sent by fetch. Requests say they are a page's script (Accept: application/json), so a 401
// comes without WWW-Authenticate and the browser shows no dialog of its own: the page shows its login form.

const STORAGE_KEY = "pg_doorman.credentials";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** "user:password" as a Basic credential (UTF-8, as the server decodes it). */
export function basicCredential(user, password) {
  const utf8 = new TextEncoder().encode(`${user}:${password}`);
  let binary = "";
  for (const byte of utf8) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

export class Api {
  constructor(storage = window.sessionStorage) {
    this.storage = storage;
    this.authorization = storage.getItem(STORAGE_KEY) || "";
  }

  login(user, password) {
    this.authorization = basicCredential(user, password);
  }

  remember() {
    this.storage.setItem(STORAGE_KEY, this.authorization);
  }

  logout() {
    this.authorization = "";
    this.storage.removeItem(STORAGE_KEY);
  }

  headers() {
    const headers = { Accept: "application/json", "X-Requested-With": "fetch" };
    if (this.authorization) headers.Authorization = this.authorization;
    return headers;
  }

  async request(method, path) {
    let response;
    try {
      response = await fetch(path, { method, headers: this.headers(), cache: "no-store", credentials: "omit" });
    } catch (error) {
      throw new ApiError(0, `pg_doorman is not answering (${error.message})`);
    }
    if (response.status === 401) throw new Unauthorized(await messageOf(response));
    if (!response.ok) throw new ApiError(response.status, await messageOf(response));
    return response.json();
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path) {
    return this.request("POST", path);
  }
}

async function messageOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}
