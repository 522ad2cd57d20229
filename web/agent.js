// One agent's page, served on the agent's own port: the state row with the model chip, the
// live turn log with slash commands, the agent's stats charts (uPlot) and a terminal on a
// shell in its container (xterm.js over /ws/pty).
"use strict";

(() => {
  const {el, postForm, getJson, Live, ago, clock, describe, stateClass} = Hive;
  const $ = (id) => document.getElementById(id);

  let agent = null;          // the agent's row, as the API and the events give it
  const LOG_LINES = 1000;

  // -- the state row ---------------------------------------------------------------------------

  function setAgent(row) {
    if (!row) return;
    const first = agent === null;
    agent = row;
    document.title = `hive · ${row.name}`;
    $("agent-name").textContent = row.name;
    const st = $("state");
    st.textContent = row.state.replace("_", " ");
    st.className = `state ${stateClass(row.state)}`;
    showModel(row);
    $("role").textContent = row.role;
    $("generation").textContent = `gen ${row.generation}`;
    $("turns").textContent = `${row.turns} turns`;
    $("restarts").textContent = `${row.restarts} restarts`;
    $("inbox").textContent = `inbox ${row.inbox_depth}`;
    const last = row.last_turn;
    $("last-turn").textContent = last ? `last turn ${last.outcome} ${ago(last.ts)}` : "no turn yet";
    if (first) loadCharts();
  }

  // The model chip: what the next turn will use (the override, else the configured model),
  // and beside it, when it differs, what the last turn ran with.
  function showModel(row) {
    const chip = $("model-chip");
    const next = row.model_next || "unknown";
    chip.textContent = `model · ${next}`;
    chip.classList.toggle("override", Boolean(row.model_override));
    chip.title = row.model_override ?
      "the model of the agent's next turn: the operator's override (/model - clears it)" :
      "the model of the agent's next turn: its configured model";
    let last = $("model-last");
    if (!last) {
      last = el("span", {id: "model-last", class: "fact model-last",
        title: "the model the agent's last turn ran with"});
      chip.after(last);
    }
    const differs = Boolean(row.model_last) && row.model_last !== row.model_next;
    last.textContent = differs ? `last turn: ${row.model_last}` : "";
    last.hidden = !differs;
  }

  async function refreshState() {
    const answer = await getJson("/api/state");
    setAgent(answer.agent);
  }

  // -- the turn log ----------------------------------------------------------------------------

  function logLine(cls, ...parts) {
    const log = $("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(el("div", {class: `line ${cls}`}, ...parts));
    while (log.childElementCount > LOG_LINES) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function logEvent(ev) {
    logLine(`k-${ev.kind.replace(".", "-")}`, el("span", {class: "ts"}, clock(ev.ts)), " ", describe(ev));
  }

  function say(text, cls) { logLine(cls || "sys", text); }

  const live = new Live("/ws", {
    snapshot(snap) {
      setAgent(snap.agent);
      $("log").replaceChildren();
      for (const ev of snap.log) logEvent(ev);
      for (const q of snap.questions) say(`open question #${q.id}: ${q.question}`, "sys");
    },
    event(ev) {
      if (ev.view && ev.view.agent) setAgent(ev.view.agent);
      logEvent(ev);
      if (ev.kind === "turn.ended") scheduleCharts();
    },
    status(kind, reason, lastId) {
      const node = $("live");
      node.className = `live live-${kind}`;
      node.textContent = kind === "live" ? `live · event ${lastId ?? "–"}` :
        kind === "reconnecting" ? `reconnecting…${reason ? ` (${reason})` : ""}` : "connecting…";
    },
  });

  // -- slash commands ----------------------------------------------------------------------------

  const HELP = [
    "/model <name> [--persist]   the model of the next turn (--persist: survive a restart)",
    "/model -                    clear the override (back to the agent's configured model)",
    "/model                      show the model of the next turn (and of the last one)",
    "/msg <text>                 send the agent a message from the operator",
    "/clear                      clear this log view",
    "/help                       this list",
  ];

  const commands = {
    async help() { for (const line of HELP) say(line); },
    async clear() { $("log").replaceChildren(); },
    async model(args) {
      if (!args.length) {
        const next = agent && agent.model_next || "unknown";
        const lastRun = agent && agent.model_last && agent.model_last !== agent.model_next ?
          `; the last turn ran with ${agent.model_last}` : "";
        say(`the next turn uses ${next}` +
            (agent && agent.model_override ? " (operator override)" : " (configured)") + lastRun);
        return;
      }
      const persist = args.includes("--persist");
      const names = args.filter((a) => a !== "--persist");
      if (names.length !== 1) { say("usage: /model <name> [--persist], or /model - to clear", "err"); return; }
      const model = names[0] === "-" ? "" : names[0];
      const answer = await postForm("/api/model", {model, persist: persist ? "1" : "0"});
      setAgent(answer.agent);
      await refreshState();
      say(model ? `model set to ${model}${persist ? " (persisted)" : ""}: the next turn uses it` :
        "model override cleared", "ok");
    },
    async msg(args, rest) {
      if (!rest.trim()) { say("usage: /msg <text>", "err"); return; }
      const answer = await postForm("/api/message", {text: rest});
      say(`message #${answer.id} sent to ${answer.agent}`, "ok");
    },
  };

  async function run(line) {
    const text = line.trim();
    if (!text) return;
    logLine("echo", `› ${text}`);
    if (!text.startsWith("/")) {
      say("commands start with /: try /msg <text> to message the agent, or /help", "err");
      return;
    }
    const [head, ...args] = text.slice(1).split(/\s+/);
    const rest = text.slice(1 + head.length).replace(/^\s/, "");
    const command = commands[head];
    if (!command) { say(`unknown command /${head}; /help lists the commands`, "err"); return; }
    try {
      await command(args, rest);
    } catch (error) {
      say(`/${head} failed: ${error.message}`, "err");
    }
  }

  $("command-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("command");
    const line = input.value;
    input.value = "";
    run(line);
  });

  // -- stats charts ------------------------------------------------------------------------------
  // Every chart reads /api/stats?agent=<name>&window=<w>: the server buckets the rows by its
  // `step`, the page fills the window's grid (event series: 0 where nothing happened; gauges:
  // gaps, spanned) and derives rates, per-turn ratios and histogram quantiles from the sums.
  // window.hiveCharts holds what each chart drew (the page tests read it).

  const WINDOWS = {"15m": "last 15 min", "1h": "last hour", "24h": "last 24 h", "7d": "last 7 days"};
  const BOUNDS = [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, Infinity];
  const boundKey = (b) => `turn.duration_le.${b === Infinity ? "+Inf" : Number.isInteger(b) ? b.toFixed(1) : String(b)}`;
  const KINDS = ["peer", "operator", "manager", "system"];
  const KIND_COLORS = ["#7aa2f7", "#bb9af7", "#e0af68", "#9aa5ce"];
  const TOOL_COLORS = ["#7aa2f7", "#9ece6a", "#e0af68", "#f7768e", "#bb9af7", "#7dcfff", "#ff9e64", "#c0caf5", "#73daca", "#db4b4b"];
  const OUTCOMES = ["ok", "compact-retry", "failure", "timeout", "cancelled"];
  const GAUGES = new Set(["inbox.depth", "since_last_turn_s", "notes.bytes"]);
  const MAIN_KEYS = ["turns", "turn.tool_calls", ...OUTCOMES.map((o) => `turn.outcome.${o}`),
    ...BOUNDS.map(boundKey), "inbox.depth", "since_last_turn_s", "notes.bytes",
    ...KINDS.map((k) => `sent.${k}`), ...KINDS.map((k) => `received.${k}`)];
  const STUCK_AFTER = 600;  // seconds without a turn while messages wait: the agent is stuck

  const sumOf = (xs) => xs.reduce((a, v) => a + (v || 0), 0);
  const maxOf = (xs) => xs.reduce((a, v) => (v != null && v > a ? v : a), 0);
  const round = (v, digits = 2) => (v == null ? null : Math.round(v * 10 ** digits) / 10 ** digits);
  const perTurn = (d, key) => d.col(key).map((v, i) => (d.turns[i] > 0 ? (v || 0) / d.turns[i] : null));

  // The q-quantile of one bucket's duration histogram (linear inside a bound, as Prometheus'
  // histogram_quantile); null without turns.
  function quantile(d, i, q) {
    const counts = BOUNDS.map((b) => d.col(boundKey(b))[i] || 0);
    const total = sumOf(counts);
    if (!total) return null;
    const rank = q * total;
    let below = 0;
    for (let j = 0; j < BOUNDS.length; j++) {
      if (below + counts[j] >= rank && counts[j] > 0) {
        const lower = j ? BOUNDS[j - 1] : 0;
        if (BOUNDS[j] === Infinity) return lower;
        return lower + (BOUNDS[j] - lower) * (rank - below) / counts[j];
      }
      below += counts[j];
    }
    return BOUNDS[BOUNDS.length - 2];
  }

  // Each chart: the raw keys that say whether it has data, and its series from the filled grid.
  const CHARTS = [
    {id: "turns", title: "turns / min", raw: ["turns"], build: (d) => [
      {label: "turns/min", color: "#7aa2f7", values: d.turns.map((v) => v / (d.step / 60))}]},
    {id: "tools-per-turn", title: "tool calls / turn", raw: ["turns"], build: (d) => [
      {label: "tool calls/turn", color: "#e0af68", values: perTurn(d, "turn.tool_calls")}]},
    {id: "duration", title: "turn duration (s)", raw: ["turns"], build: (d) => [
      {label: "p50", color: "#9ece6a", values: d.xs.map((_, i) => quantile(d, i, 0.5))},
      {label: "p95", color: "#f7768e", values: d.xs.map((_, i) => quantile(d, i, 0.95))}]},
    {id: "exits", title: "claude exits per bucket", raw: OUTCOMES.map((o) => `turn.outcome.${o}`), build: (d) => {
      const failure = d.xs.map((_, i) => ["failure", "timeout", "cancelled"]
        .reduce((a, o) => a + (d.col(`turn.outcome.${o}`)[i] || 0), 0));
      return [
        {label: "ok", color: "#9ece6a", values: d.col("turn.outcome.ok"), total: true},
        {label: "after compact-retry", color: "#e0af68", values: d.col("turn.outcome.compact-retry"), total: true},
        {label: "failure", color: "#f7768e", values: failure, total: true},
      ];
    }},
    {id: "inbox", title: "inbox depth", raw: ["inbox.depth"], build: (d) => {
      // The samples (each bucket's most), and the live depth as the newest point.
      const depth = d.col("inbox.depth").slice();
      if (d.inboxNow !== null && d.inboxNow !== undefined) {
        depth[depth.length - 1] = Math.max(depth[depth.length - 1] ?? 0, d.inboxNow);
      }
      const max = maxOf(depth);
      return [
        {label: `now ${d.inboxNow ?? "–"}`, color: "#f7768e", values: depth},
        {label: `max over window ${max}`, color: "#565f89", values: d.xs.map(() => max), dash: true, reference: true},
      ];
    }},
    {id: "sent", title: "sent / turn, by recipient", raw: KINDS.map((k) => `sent.${k}`), build: (d) =>
      KINDS.map((k, i) => ({label: k, color: KIND_COLORS[i], values: perTurn(d, `sent.${k}`)}))},
    {id: "received", title: "received / turn, by kind", raw: KINDS.map((k) => `received.${k}`), build: (d) =>
      KINDS.map((k, i) => ({label: k, color: KIND_COLORS[i], values: perTurn(d, `received.${k}`)}))},
    {id: "tool-usage", title: "tool calls, by tool", raw: null, build: (d) => (d.tools.length ?
      d.tools.map((key, i) => ({label: key.slice(5), color: TOOL_COLORS[i % TOOL_COLORS.length], values: d.col(key), total: true})) :
      [{label: "no tool calls", color: "#565f89", values: d.xs.map(() => null)}])},
    {id: "since-last-turn", title: "minutes since the last turn", raw: ["since_last_turn_s"], build: (d) => {
      // The samples, and the live value as the newest point (the sampler writes a growing age
      // only every few minutes; a stuck agent must show now, not at the next heartbeat).
      const values = d.col("since_last_turn_s").map((v) => round(v == null ? null : v / 60));
      if (d.sinceNow !== null) values[values.length - 1] = round(d.sinceNow / 60);
      return [{label: d.sinceNow === null ? "minutes" : `now ${round(d.sinceNow / 60, 1)} min`, color: "#7dcfff", values}];
    }},
    {id: "notes", title: "notes.md (KiB)", raw: ["notes.bytes"], build: (d) => {
      const threshold = d.thresholds["notes.bytes"];
      const series = [{label: "size", color: "#9ece6a", values: d.col("notes.bytes").map((v) => round(v == null ? null : v / 1024))}];
      if (threshold) series.push({label: `compaction at ${round(threshold / 1024, 1)} KiB`, color: "#f7768e", values: d.xs.map(() => threshold / 1024), dash: true, reference: true});
      return series;
    }},
  ];

  const state = window.hiveCharts = {window: null, url: null, step: null, error: null, charts: {}};
  let chartTimer = null;
  let chartWindow = new URLSearchParams(location.search).get("window") || "1h";

  function scheduleCharts() {
    clearTimeout(chartTimer);
    chartTimer = setTimeout(loadCharts, 1500);
  }

  function windowPicker() {
    if ($("stats-window")) return;
    const picker = el("div", {id: "stats-window", class: "window-picker", role: "group"});
    for (const [name, words] of Object.entries(WINDOWS)) {
      picker.append(el("button", {type: "button", class: "small", dataset: {window: name}, title: words,
        onclick: () => { chartWindow = name; loadCharts(); }}, name));
    }
    $("charts").before(picker);
  }

  function statsError(message) {
    state.error = message;
    const note = $("stats-note");
    note.textContent = `stats: ${message}`;
    note.classList.add("error");
  }

  // The answer's columns on the window's full grid of buckets.
  function grid(main, tools, now) {
    const step = main.step;
    const x0 = Math.floor(main.since / step) * step;
    const last = Math.max(now, ...main.data[0], ...tools.data[0]);
    const xs = [];
    for (let t = x0; t <= last; t += step) xs.push(t);
    const index = new Map(xs.map((t, i) => [t, i]));
    const columns = {};
    const raw = {};
    for (const answer of [main, tools]) {
      const [ts, ...cols] = answer.data;
      answer.keys.forEach((key, k) => {
        const out = xs.map(() => (GAUGES.has(key) ? null : 0));
        let seen = false;
        ts.forEach((t, i) => {
          const at = index.get(t);
          const v = cols[k][i];
          if (at === undefined || v == null) return;
          out[at] = v;
          seen = true;
        });
        columns[key] = out;
        raw[key] = seen;
      });
    }
    const col = (key) => columns[key] || xs.map(() => (GAUGES.has(key) ? null : 0));
    const lastTurn = agent && agent.last_turn ? agent.last_turn.ts : null;
    return {xs, step, col, raw, turns: col("turns"), tools: tools.keys, thresholds: main.thresholds || {},
      inboxNow: agent ? agent.inbox_depth : null,
      sinceNow: lastTurn === null ? null : Math.max(0, Date.now() / 1000 - lastTurn)};
  }

  function draw(chart, d, range) {
    const series = chart.build(d);
    const hasData = chart.raw === null ? d.tools.some((key) => d.raw[key]) : chart.raw.some((key) => d.raw[key]);
    let box = $(`chart-${chart.id}`);
    if (!box) {
      box = el("div", {id: `chart-${chart.id}`, class: "chart", dataset: {chart: chart.id}});
      $("charts").append(box);
    }
    const old = state.charts[chart.id];
    if (old && old.plot) old.plot.destroy();
    box.replaceChildren();
    box.classList.toggle("empty", !hasData);
    const labelled = series.map((s) => ({...s,
      label: s.total ? `${s.label} · ${round(sumOf(s.values))}` : s.label}));
    const data = [d.xs, ...labelled.map((s) => s.values)];
    const top = Math.max(...labelled.map((s) => maxOf(s.values)), 0);
    const width = Math.max(300, Math.min(440, ($("charts").clientWidth - 24) / 3 - 12));
    const opts = {
      title: chart.title, width, height: 180,
      scales: {x: {time: true, range: () => range}, y: {range: () => [0, top > 0 ? top * 1.15 : 1]}},
      axes: [{stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}}, {stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}, size: 48}],
      series: [{}, ...labelled.map((s) => ({
        label: s.label, stroke: s.color, width: s.reference ? 1 : 2, dash: s.dash ? [6, 4] : undefined,
        spanGaps: true, points: {show: !s.reference, size: 4},
      }))],
    };
    const plot = new uPlot(opts, data, box);
    if (!hasData) {
      box.append(el("p", {class: "chart-empty"}, `${chart.title}: no data in the ${WINDOWS[state.window] || state.window}`));
    }
    const points = labelled.filter((s) => !s.reference)
      .reduce((n, s) => n + s.values.filter((v) => v != null).length, 0);
    state.charts[chart.id] = {plot, empty: !hasData, points, series: labelled.map((s) => s.label)};
    return box;
  }

  function markStuck(d) {
    const box = $("chart-since-last-turn");
    const last = agent && agent.last_turn ? agent.last_turn.ts : null;
    const since = last ? Date.now() / 1000 - last : null;
    const stuck = since !== null && since > STUCK_AFTER && (agent.inbox_depth || 0) > 0;
    box.classList.toggle("stuck", stuck);
    if (stuck) {
      box.prepend(el("p", {class: "stuck-badge"},
        `stuck? ${Math.round(since / 60)} min without a turn, ${agent.inbox_depth} message(s) waiting`));
    }
    state.stuck = stuck;
  }

  async function loadCharts() {
    if (!agent || typeof uPlot === "undefined") return;
    windowPicker();
    for (const button of $("stats-window").querySelectorAll("button")) {
      button.classList.toggle("primary", button.dataset.window === chartWindow);
    }
    const hint = document.querySelector("#stats-section h2 .hint");
    if (hint) hint.textContent = WINDOWS[chartWindow] || `window ${chartWindow}`;
    const base = `/api/stats?agent=${encodeURIComponent(agent.name)}&window=${encodeURIComponent(chartWindow)}`;
    state.window = chartWindow;
    state.url = `${base}&keys=${MAIN_KEYS.map(encodeURIComponent).join(",")}`;
    let main;
    let tools;
    try {
      [main, tools] = await Promise.all([getJson(state.url), getJson(`${base}&keys=tool.*`)]);
    } catch (error) {
      statsError(error.message);
      return;
    }
    state.error = null;
    state.step = main.step;
    const now = Date.now() / 1000;
    const d = grid(main, tools, main.until || now);
    const range = [d.xs[0], Math.max(main.until || now, d.xs[d.xs.length - 1])];
    const boxes = CHARTS.map((chart) => draw(chart, d, range));
    markStuck(d);
    const empty = Object.values(state.charts).filter((c) => c.empty).length;
    const note = $("stats-note");
    note.classList.remove("error");
    note.textContent = empty === CHARTS.length ?
      `no stats in the ${WINDOWS[chartWindow] || chartWindow} yet: the charts fill in as the agent runs turns` :
      `${WINDOWS[chartWindow] || chartWindow}, ${main.step / 60} min per point`;
    $("charts").dataset.points = String(main.data[0].length);
    $("charts").dataset.window = chartWindow;
    $("charts").replaceChildren(...boxes);
  }

  setInterval(loadCharts, 60000);

  // -- the terminal ------------------------------------------------------------------------------

  let terminal = null;
  let fit = null;
  let pty = null;

  function openTerminal() {
    if (pty && pty.readyState <= WebSocket.OPEN) return;
    if (!terminal) {
      terminal = new Terminal({
        cursorBlink: true, fontSize: 13, scrollback: 5000,
        fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
        theme: {background: "#11131c", foreground: "#c0caf5"},
      });
      fit = new FitAddon.FitAddon();
      terminal.loadAddon(fit);
      terminal.open($("terminal"));
      terminal.onData((data) => {
        if (pty && pty.readyState === WebSocket.OPEN) pty.send(new TextEncoder().encode(data));
      });
      terminal.onResize(({cols, rows}) => {
        if (pty && pty.readyState === WebSocket.OPEN) pty.send(JSON.stringify({type: "resize", cols, rows}));
      });
      window.addEventListener("resize", () => fit.fit());
    }
    fit.fit();
    const url = new URL("/ws/pty", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    pty = socket;
    $("terminal-status").textContent = "connecting…";
    socket.addEventListener("open", () => {
      $("terminal-status").textContent = "connected";
      $("terminal-open").textContent = "Reconnect";
      socket.send(JSON.stringify({type: "resize", cols: terminal.cols, rows: terminal.rows}));
      terminal.focus();
    });
    socket.addEventListener("message", (message) => {
      if (typeof message.data !== "string") terminal.write(new Uint8Array(message.data));
    });
    socket.addEventListener("close", (event) => {
      const why = event.reason || `code ${event.code}`;
      $("terminal-status").textContent = `closed: ${why}`;
      terminal.write(`\r\n\x1b[33m[terminal closed: ${why}]\x1b[0m\r\n`);
    });
  }

  $("terminal-open").addEventListener("click", openTerminal);

  refreshState().catch((error) => say(`cannot read the agent's state: ${error.message}`, "err"));
  live.start();
  say("type /help for the commands");
})();
