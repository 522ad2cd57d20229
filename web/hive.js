// What the dashboard and the agent pages share: the live websocket (snapshot, events, resume
// with ?since= after a reconnect), form posts to the API, DOM helpers, event descriptions.
// No framework and nothing fetched from elsewhere: this file, the page's own script, and the
// vendored libraries under vendor/.
"use strict";

const Hive = (() => {
  /** Build an element: el("div", {class: "x", onclick: fn}, "text", child, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** POST a form (application/x-www-form-urlencoded) and return the JSON answer; an error
   * answer throws an Error carrying the hive's message. */
  async function postForm(url, fields) {
    const body = new URLSearchParams();
    for (const [key, value] of Object.entries(fields || {})) {
      if (value !== undefined && value !== null) body.append(key, String(value));
    }
    const response = await fetch(url, {
      method: "POST", body, credentials: "same-origin", headers: {Accept: "application/json"},
    });
    return answer(response);
  }

  async function getJson(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    return answer(response);
  }

  /** The hive answered 401: this browser has not logged in (or its cookie is from a token
   * since replaced). The login page says how; it comes back here once logged in. */
  function toLogin() {
    if (location.pathname !== "/login") location.assign("/login");
  }

  async function answer(response) {
    if (response.status === 401) toLogin();
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  /** The live events of one websocket path: a snapshot, then events in id order; after a
   * drop it reconnects with ?since=<last applied id> and goes on without gap or repeat. */
  class Live {
    constructor(path, handlers) {
      this.path = path;
      this.handlers = handlers;
      this.lastId = null;
      this.delay = 250;
      this.socket = null;
      this.pinger = null;
    }

    start() { this.connect(); }

    connect() {
      const url = new URL(this.path, location.href);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      if (this.lastId !== null) url.searchParams.set("since", String(this.lastId));
      const socket = new WebSocket(url);
      this.socket = socket;
      this.status("connecting");
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        this.delay = 250;
        this.status("live");
        this.pinger = setInterval(() => {
          if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "ping"}));
        }, 25000);
      });
      socket.addEventListener("message", (message) => this.receive(message.data));
      socket.addEventListener("close", (event) => {
        clearInterval(this.pinger);
        if (this.socket !== socket) return;
        if (!opened) {
          // A refused upgrade says nothing to the page: ask the API whether it is a login.
          fetch("/api/state", {credentials: "same-origin", headers: {Accept: "application/json"}})
            .then((response) => { if (response.status === 401) toLogin(); })
            .catch(() => {});
        }
        this.status("reconnecting", event.reason);
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      });
    }

    receive(text) {
      const message = JSON.parse(text);
      if (message.type === "snapshot") {
        this.lastId = message.last_event_id;
        this.handlers.snapshot(message.snapshot, message.last_event_id);
        this.status("live");
      } else if (message.type === "event") {
        const event = message.event;
        if (this.lastId !== null && event.id <= this.lastId) return;
        this.lastId = event.id;
        this.handlers.event(event);
        // For the page's other parts (e.g. servers.js): every event applied, once, in order.
        document.dispatchEvent(new CustomEvent("hive:event", {detail: event}));
        this.status("live");
      }
      // "resync": the missed events follow from the log; "pong": nothing to do.
    }

    status(state, reason) {
      if (this.handlers.status) this.handlers.status(state, reason || "", this.lastId);
    }
  }

  /** "12 s ago", "3 min ago"… for a wall-clock timestamp in seconds. */
  function ago(ts) {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function clock(ts) {
    const d = new Date(ts * 1000);
    return d.toTimeString().slice(0, 8);
  }

  /** A unified diff as coloured monospace lines (+ added, - removed, @@ hunks, headers). */
  function diffView(diff) {
    const pre = el("pre", {class: "diff"});
    for (const line of String(diff || "").split("\n")) {
      let kind = "ctx";
      if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") ||
          line.startsWith("index ") || line.startsWith("new agent")) kind = "meta";
      else if (line.startsWith("+")) kind = "add";
      else if (line.startsWith("-")) kind = "del";
      else if (line.startsWith("@@")) kind = "hunk";
      pre.append(el("span", {class: `d-${kind}`}, line + "\n"));
    }
    return pre;
  }

  /** One line that says what an event means. */
  function describe(event) {
    const p = event.payload || {};
    switch (event.kind) {
      case "agent.registered": return `registered as ${p.role} (${p.state})`;
      case "agent.state": return `${p.from} → ${p.to}${p.reason ? ` (${p.reason})` : ""}`;
      case "agent.spawned": return `spawned, generation ${p.generation}`;
      case "agent.destroyed":
        return p.purged ? "kept state purged" : `destroyed (${p.kept_state ? "state kept" : "state removed"})`;
      case "agent.port": return `page on port ${p.to}`;
      case "agent.model": return p.to ? `model override → ${p.to}${p.persisted ? " (persisted)" : ""}` : "model override cleared";
      case "message.sent": return `← ${p.kind} message from ${p.from} (${p.bytes} bytes)`;
      case "message.claimed": return `turn took ${(p.ids || []).length} message(s)`;
      case "message.delivered": return `${(p.ids || []).length} message(s) delivered`;
      case "message.released": return `${(p.ids || []).length} message(s) back in the inbox (${p.reason})`;
      case "message.stale": return `${(p.ids || []).length} message(s) went stale`;
      case "approval.requested": return `approval #${p.id}: ${p.kind} requested by ${p.requested_by}`;
      case "approval.decided": return `approval #${p.id} ${p.status} by ${p.by}`;
      case "approval.carried_out": return `approval #${p.id} carried out: ${p.outcome}`;
      case "question.asked": return `asked the operator (question #${p.id})`;
      case "question.answered": return `question #${p.id} answered by ${p.by}`;
      case "turn.started": return `turn started (model ${p.model})`;
      case "turn.log": return p.line;
      case "turn.ended": {
        const secs = typeof p.duration_s === "number" ? ` in ${p.duration_s.toFixed(1)} s` : "";
        return `turn ended: ${p.outcome}${secs}${p.error ? ` — ${p.error}` : ""}`;
      }
      case "agent.crashed": return `CRASHED: ${p.reason}`;
      case "agent.restarting":
        return `restarting (restart ${p.restart} of ${p.limit}, next try in ${Number(p.delay).toFixed(1)} s): ${p.reason}`;
      case "agent.given_up": return `GIVEN UP: ${p.reason}`;
      case "notes.compacted": return p.line || "notes compacted";
      default: return JSON.stringify(p);
    }
  }

  /** A CSS class for an agent state. */
  function stateClass(state) {
    if (["crashed", "given_up"].includes(state)) return "st-bad";
    if (["backoff", "waiting_operator", "waiting_approval", "starting", "pending"].includes(state)) return "st-warn";
    if (["idle", "busy"].includes(state)) return "st-ok";
    return "st-off";
  }

  return {el, postForm, getJson, Live, ago, clock, diffView, describe, stateClass};
})();
