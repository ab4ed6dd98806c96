// The Kubernetes API as the page uses it: every request carries the pasted token, an
// error answers with the server's own Status, and a list is followed by its watch.

export class ApiError extends Error {
  constructor(status, code) {
    super(status.message || `HTTP ${code}`);
    this.status = status;
    this.code = code;
  }
}

// The first page small, so the first rows show at once; the rest in fewer, larger pages.
const FIRST_PAGE = 500;
const PAGE = 2000;

export class Api {
  constructor(token) {
    this.token = token;
  }

  async fetch(method, path, { body, type, accept = "application/json", signal } = {}) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: accept };
    if (type) headers["Content-Type"] = type;
    const response = await fetch(path, { method, headers, body, signal });
    if (!response.ok) {
      let status;
      try { status = await response.json(); } catch { status = { message: `${response.status} ${response.statusText}` }; }
      throw new ApiError(status, response.status);
    }
    return response;
  }

  async json(path, options) {
    return (await this.fetch("GET", path, options)).json();
  }

  async text(path, accept) {
    return (await this.fetch("GET", path, { accept })).text();
  }

  async send(method, path, body, type = "application/json") {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    return (await this.fetch(method, path, { body: text, type })).json();
  }

  // Lists `path` page by page (onPage(items) for each, so the first rows show before the
  // rest arrive), then follows its watch (onEvent(type, object)) from the list's
  // resourceVersion (onListed() between). A compacted version (410) or a closed stream lists again, after
  // onReset(). Ends when `signal` aborts.
  async follow(path, { onReset, onPage, onListed = () => {}, onEvent, signal }) {
    const sep = path.includes("?") ? "&" : "?";
    while (!signal.aborted) {
      try {
        onReset();
        let version = "", next = "";
        do {
          const list = await this.json(`${path}${sep}limit=${next ? PAGE : FIRST_PAGE}${next ? `&continue=${encodeURIComponent(next)}` : ""}`, { signal });
          version = version || list.metadata.resourceVersion;
          next = list.metadata.continue || "";
          onPage(list.items);
        } while (next);
        onListed();
        const stream = await this.fetch("GET", `${path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${version}`, { signal });
        let gone = false;
        await readLines(stream, line => {
          const event = JSON.parse(line);
          if (event.type === "ERROR") { gone = true; return; }
          if (event.type !== "BOOKMARK") onEvent(event.type, event.object);
        });
        if (!gone) await pause(250, signal);
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof ApiError && (e.code === 401 || e.code === 403)) throw e;
        console.warn(`following ${path}:`, e);
        await pause(1000, signal);
      }
    }
  }

  // Streams a text body line by line (a pod's log with follow=true).
  async lines(path, onLine, signal) {
    await readLines(await this.fetch("GET", path, { accept: "text/plain", signal }), onLine);
  }
}

async function readLines(response, onLine) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const parts = (rest + value).split("\n");
    rest = parts.pop();
    for (const part of parts) if (part) onLine(part);
  }
  if (rest) onLine(rest);
}

function pause(ms, signal) {
  return new Promise(resolve => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
