// CTI client: an agent's events over one WebSocket, and the HTTP API, with a token. No dependencies,
// no build step. Used by the server's own pages, and embeddable in a CRM page (its origin listed in
// the server's http.allowed_origins):
//
//   <script src="https://cti.example.com/static/cti-client.js"></script>
//   <script>
//     const cti = new CtiClient({server: "https://cti.example.com", token, agent: "alice",
//                                onEvent: env => show(env),        // every envelope, once, in seq order
//                                onStatus: s => badge(s),          // {live, code?, reason?, error?}
//                                onGap: (from, to) => reload()});  // events may be missing: re-read the snapshot
//     const view = await cti.snapshot();  // {seq, state, offers, calls}: show it, then ...
//     cti.connect();                      // ... the WebSocket resumes after that seq
//     await cti.command({command: "ready"});                       // resolves with the reply, rejects with CtiError
//     await cti.command({command: "not_ready", reason: "lunch"});
//   </script>
//
// Also: cti.api(path, {method, body}) for any endpoint (JSON in and out; a CtiError carries status and
// error_id); cti.clientConfig(); cti.callsToday() (GET /api/agents/{agent}/calls/today); cti.serverNow(),
// the server's clock in epoch seconds, estimated from the envelopes' ts (so `since`, `expires_at` and
// `wrap_up_ends_at` are compared with the server's time, not the PC's); cti.offerExpired(payload), true
// once a call.offered's expires_at has passed (offers without one never expire on the client).
// CtiClient.tokenFromPage() reads #token=... from the address once and keeps it for the tab.
// Envelopes are deduplicated by id; a seq jump is reported to onGap (docs/events.md, "Writing a client").
"use strict";
(function (global) {
  const TOKEN_KEY = "cti.token";

  class CtiError extends Error {
    constructor(status, body) {
      super((body && body.message) || ("HTTP " + status));
      this.status = status; this.errorId = body && body.error_id; this.body = body;
    }
  }

  class CtiClient {
    constructor({server = "", token, agent, onEvent = () => {}, onStatus = () => {}, onGap = () => {}} = {}) {
      this.server = server.replace(/\/$/, "");
      this.token = token; this.agent = agent;
      this.onEvent = onEvent; this.onStatus = onStatus; this.onGap = onGap;
      this.lastSeq = 0; this.seen = new Set(); this.seenOrder = [];
      this.ws = null; this.stopped = false; this.delay = 500;
      this.skews = [];  // lower bounds of (server clock - this PC's clock), in ms
    }

    // A token handed over in the page's address (#token=...) is kept for this tab only and taken out
    // of the address bar, so it is not bookmarked or shared by accident.
    static tokenFromPage() {
      const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash.slice(1) ? "#" + location.hash.slice(1) : "");
      if (m) {
        sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
        history.replaceState(null, "", location.pathname + location.search);
      }
      return sessionStorage.getItem(TOKEN_KEY);
    }
    static rememberToken(token) { sessionStorage.setItem(TOKEN_KEY, token); }
    static forgetToken() { sessionStorage.removeItem(TOKEN_KEY); }
    // The page's #signin form (with its #token field): shown until a token is typed in, which is kept
    // for the tab and handed to the client before then() runs.
    static showSignIn(client, then) {
      const form = document.querySelector("#signin");
      form.hidden = false;
      form.onsubmit = (ev) => {
        ev.preventDefault();
        client.token = document.querySelector("#token").value.trim();
        CtiClient.rememberToken(client.token);
        form.hidden = true;
        then();
      };
    }

    // The server's clock. A time the server stamped (an envelope's ts, a reply's Date header) is at
    // most the server's time when it arrives, so each is a lower bound of the offset; the largest of the
    // recent ones is the estimate. 0 (this PC's clock) until the first.
    _skew(serverMs) {
      if (!Number.isFinite(serverMs)) return;
      this.skews.push(serverMs - Date.now());
      if (this.skews.length > 64) this.skews.shift();
    }
    serverNow() {
      return (Date.now() + (this.skews.length ? Math.max(...this.skews) : 0)) / 1000;
    }
    // A ringing offer whose expires_at (epoch seconds, server clock) has passed: take its pop down.
    offerExpired(payload, now = this.serverNow()) {
      return payload != null && typeof payload.expires_at === "number" && payload.expires_at <= now;
    }

    async api(path, {method = "GET", body} = {}) {
      const headers = {"Authorization": "Bearer " + this.token};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const r = await fetch(this.server + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
      const date = r.headers.get("Date");  // whole seconds: the server's time was at least this
      if (date) this._skew(Date.parse(date));
      const data = await r.json().catch(() => null);
      if (!r.ok) throw new CtiError(r.status, data);
      return data;
    }

    connect() {
      this.stopped = false;
      const base = this.server || location.origin;
      // After the first connection, resume: the server sends what was missed since the last seq seen.
      const url = base.replace(/^http/, "ws") + "/ws/agents/" + encodeURIComponent(this.agent)
        + "?token=" + encodeURIComponent(this.token) + (this.lastSeq ? "&since=" + this.lastSeq : "");
      const ws = this.ws = new WebSocket(url);
      ws.onopen = () => { this.delay = 500; this.onStatus({live: true}); };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;  // replaced by a newer connection
        this.onStatus({live: false, code: ev.code, reason: ev.reason});
        if (!this.stopped) { setTimeout(() => this.connect(), this.delay); this.delay = Math.min(this.delay * 2, 10000); }
      };
      ws.onmessage = (m) => {
        let env;
        try {
          env = JSON.parse(m.data);
          if (!env || typeof env.type !== "string") throw new Error("no event type");
        } catch (e) {
          this.onStatus({live: true, error: "unreadable event (" + e.message + ")"});
          ws.close();
          return;
        }
        if (env.type === "hello") {
          if (env.resume && !env.resume.complete) this.onGap(env.resume.since + 1, null);  // take a snapshot
          return;
        }
        if (env.id && this.seen.has(env.id)) return;  // QoS 1, two transports: the same event twice
        if (env.id) {
          this.seen.add(env.id); this.seenOrder.push(env.id);
          if (this.seenOrder.length > 2000) this.seen.delete(this.seenOrder.shift());
        }
        if (typeof env.ts === "string") this._skew(Date.parse(env.ts));
        if (env.seq && this.lastSeq && env.seq <= this.lastSeq) return;  // already in the snapshot
        if (env.seq && this.lastSeq && env.seq > this.lastSeq + 1) this.onGap(this.lastSeq + 1, env.seq - 1);
        this.lastSeq = Math.max(this.lastSeq, env.seq || 0);
        this.onEvent(env);
      };
    }

    // What the agent's screen shows now, as of its seq (docs/events.md, "Snapshot").
    async snapshot() {
      const snap = await this.api("/api/agents/" + encodeURIComponent(this.agent) + "/snapshot");
      this.lastSeq = Math.max(this.lastSeq, snap.seq || 0);
      return snap;
    }

    // Where the transports are, and (when the server has them) the not-ready reasons and dispositions.
    clientConfig() {
      return this.api("/api/client-config?agent=" + encodeURIComponent(this.agent));
    }

    // The agent's calls today, newest first: {agent, day, calls: [...]}. A CtiError with status 404 on
    // a server without call history.
    callsToday() {
      return this.api("/api/agents/" + encodeURIComponent(this.agent) + "/calls/today");
    }

    // One command (docs/events.md, "Commands"): resolves with the result, rejects with a CtiError.
    command(body) {
      return this.api("/api/agents/" + encodeURIComponent(this.agent) + "/commands", {method: "POST", body});
    }

    close() { this.stopped = true; if (this.ws) this.ws.close(); }
  }

  global.CtiClient = CtiClient;
  global.CtiError = CtiError;
})(window);
