// CTI client: the agent's events over one WebSocket, and the HTTP API, with a token.
// Used by the server's own pages, and embeddable in a CRM page (another origin listed in
// http.allowed_origins):
//   <script src="https://cti.example.com/static/cti-client.js"></script>
//   const cti = new CtiClient({server: "https://cti.example.com", token, agent: "alice",
//                              onEvent: env => ..., onStatus: s => ...});
//   cti.connect();
// Envelopes are deduplicated by id; seq gaps are reported to onGap (re-read the calls then).
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

    async api(path, {method = "GET", body} = {}) {
      const headers = {"Authorization": "Bearer " + this.token};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const r = await fetch(this.server + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
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

    // One command (docs/events.md, "Commands"): resolves with the result, rejects with a CtiError.
    command(body) {
      return this.api("/api/agents/" + encodeURIComponent(this.agent) + "/commands", {method: "POST", body});
    }

    close() { this.stopped = true; if (this.ws) this.ws.close(); }
  }

  global.CtiClient = CtiClient;
  global.CtiError = CtiError;
})(window);
