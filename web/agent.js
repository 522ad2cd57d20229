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
    $("model-chip").textContent = `model · ${row.model_in_use || "default"}`;
    $("model-chip").classList.toggle("override", Boolean(row.model));
    $("role").textContent = row.role;
    $("generation").textContent = `gen ${row.generation}`;
    $("turns").textContent = `${row.turns} turns`;
    $("restarts").textContent = `${row.restarts} restarts`;
    $("inbox").textContent = `inbox ${row.inbox_depth}`;
    const last = row.last_turn;
    $("last-turn").textContent = last ? `last turn ${last.outcome} ${ago(last.ts)}` : "no turn yet";
    if (first) loadCharts();
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
    "/model                      show the model in use",
    "/msg <text>                 send the agent a message from the operator",
    "/clear                      clear this log view",
    "/help                       this list",
  ];

  const commands = {
    async help() { for (const line of HELP) say(line); },
    async clear() { $("log").replaceChildren(); },
    async model(args) {
      if (!args.length) {
        say(`model in use: ${agent && agent.model_in_use || "the configured default"}` +
            (agent && agent.model ? " (operator override)" : ""));
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

  const CHARTS = [
    {title: "turns and tool calls", keys: ["turns", "turn.tool_calls"], colors: ["#7aa2f7", "#e0af68"]},
    {title: "turn duration (s)", keys: ["turn.duration_s"], colors: ["#9ece6a"]},
    {title: "inbox depth", keys: ["inbox.depth"], colors: ["#f7768e"]},
  ];
  const plots = [];
  let chartTimer = null;
  let xRange = [0, 1];  // the asked window, so one point does not stretch the axis over years

  function scheduleCharts() {
    clearTimeout(chartTimer);
    chartTimer = setTimeout(loadCharts, 1500);
  }

  async function loadCharts() {
    if (!agent || typeof uPlot === "undefined") return;
    const keys = [...new Set(CHARTS.flatMap((c) => c.keys))];
    const url = `/api/stats?agent=${encodeURIComponent(agent.name)}&keys=${keys.join(",")}`;
    let answer;
    try {
      answer = await getJson(url);
    } catch (error) {
      $("stats-note").textContent = `no stats: ${error.message}`;
      return;
    }
    const [ts, ...columns] = answer.data;
    xRange = [answer.since, answer.until || Date.now() / 1000];
    const byKey = Object.fromEntries(answer.keys.map((key, i) => [key, columns[i]]));
    $("stats-note").textContent = ts.length ? "" : "no data points in the last hour yet";
    $("charts").dataset.points = String(ts.length);
    const width = Math.max(280, Math.min(460, $("charts").clientWidth / CHARTS.length - 16));
    CHARTS.forEach((chart, i) => {
      const data = [Array.from(ts), ...chart.keys.map((key) => Array.from(byKey[key] || []))];
      if (plots[i]) { plots[i].setData(data); return; }
      const box = el("div", {class: "chart"});
      $("charts").append(box);
      plots[i] = new uPlot({
        title: chart.title, width, height: 170,
        scales: {x: {time: true, range: () => xRange}},
        axes: [{stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}}, {stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}}],
        series: [{}, ...chart.keys.map((key, k) => ({
          label: key, stroke: chart.colors[k], width: 2, spanGaps: true, points: {show: true, size: 5},
        }))],
      }, data, box);
    });
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
