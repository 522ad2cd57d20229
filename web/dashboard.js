// The dashboard: every agent, K3PT ST4T3, drafts, approvals with their diffs, the manager's
// questions, a spawn box and an operator message box — live from /ws, never reloaded.
"use strict";

(() => {
  const {el, postForm, Live, ago, clock, diffView, describe, stateClass} = Hive;

  const state = {
    agents: new Map(),     // name -> row
    approvals: new Map(),  // id -> pending approval
    questions: new Map(),  // id -> open question
    feed: [],              // the newest events, oldest first
  };
  const FEED_LINES = 200;
  const RUNNING = new Set(["pending", "starting", "idle", "busy", "waiting_approval", "waiting_operator", "backoff"]);
  const REVIVABLE = new Set(["stopped", "given_up", "crashed"]);

  const $ = (id) => document.getElementById(id);

  // -- applying the live stream -------------------------------------------------------------

  function snapshot(snap) {
    state.agents = new Map(snap.agents.map((a) => [a.name, a]));
    state.approvals = new Map(snap.approvals.map((a) => [a.id, a]));
    state.questions = new Map(snap.questions.map((q) => [q.id, q]));
    state.feed = snap.recent.slice(-FEED_LINES);
    render();
    scheduleApprovalChart();
  }

  function event(ev) {
    const view = ev.view || {};
    if (view.agent) state.agents.set(view.agent.name, view.agent);
    if (view.approval) {
      if (view.approval.status === "pending") state.approvals.set(view.approval.id, view.approval);
      else state.approvals.delete(view.approval.id);
      scheduleApprovalChart();
    }
    if (view.question) {
      if (view.question.answered === null) state.questions.set(view.question.id, view.question);
      else state.questions.delete(view.question.id);
    }
    state.feed.push(ev);
    if (state.feed.length > FEED_LINES) state.feed.splice(0, state.feed.length - FEED_LINES);
    render();
  }

  function status(kind, reason, lastId) {
    const live = $("live");
    live.className = `live live-${kind}`;
    live.textContent = kind === "live" ? `live · event ${lastId ?? "–"}` :
      kind === "reconnecting" ? `reconnecting…${reason ? ` (${reason})` : ""}` : "connecting…";
  }

  // -- rendering (batched: at most once a frame) ---------------------------------------------

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      renderAgents();
      renderKept();
      renderDrafts();
      renderApprovals();
      renderQuestions();
      renderFeed();
      renderCounts();
    });
  }

  function agentsWhere(test) {
    return [...state.agents.values()].filter(test).sort((a, b) =>
      (a.role === "manager" ? 0 : 1) - (b.role === "manager" ? 0 : 1) || a.name.localeCompare(b.name));
  }

  function pageLink(agent) {
    if (!agent.web_port) return el("span", {class: "name", title: agent.page_error || "no page yet"}, agent.name);
    const href = `${location.protocol}//${location.hostname}:${agent.web_port}/`;
    return el("a", {class: "name", href, target: "_blank", rel: "noopener"}, agent.name);
  }

  function action(label, onclick, cls) {
    return el("button", {type: "button", class: cls || "small", onclick}, label);
  }

  function renderAgents() {
    const live = agentsWhere((a) => a.state !== "destroyed" && a.state !== "draft");
    const body = $("agents").tBodies[0];
    body.replaceChildren(...live.map((a) => {
      const last = a.last_turn;
      const actions = [];
      if (RUNNING.has(a.state)) actions.push(action("Stop", () => act(`/api/agents/${a.name}/stop`, `stopping ${a.name}`)));
      if (REVIVABLE.has(a.state)) actions.push(action("Revive", () => act(`/api/agents/${a.name}/revive`, `reviving ${a.name}`)));
      actions.push(action("Destroy", () => {
        if (confirm(`Destroy ${a.name}'s container? Its state directory is kept (K3PT ST4T3).`)) {
          act(`/api/agents/${a.name}/destroy`, `destroying ${a.name}`, {keep_state: "1"});
        }
      }, "small danger"));
      return el("tr", {dataset: {agent: a.name}},
        el("td", {}, pageLink(a), a.page_error ? el("div", {class: "error small-text"}, a.page_error) : null),
        el("td", {}, a.role),
        el("td", {}, el("span", {class: `state ${stateClass(a.state)}`}, a.state.replace("_", " "))),
        el("td", {}, el("span", {class: a.model_override ? "chip override" : "chip"},
          `model · ${a.model_next || "unknown"}`),
          a.model_last && a.model_last !== a.model_next ?
            el("div", {class: "small-text model-last"}, `last turn: ${a.model_last}`) : null),
        el("td", {class: "num turns"}, a.turns),
        el("td", {class: "last-turn"}, last ? `${last.outcome} · ${ago(last.ts)}` : "–"),
        el("td", {class: "num restarts"}, a.restarts),
        el("td", {class: "num inbox"}, a.inbox_depth),
        el("td", {class: "actions"}, actions));
    }));
    $("agents-empty").hidden = live.length > 0;
    const select = $("message-agent");
    const chosen = select.value;
    select.replaceChildren(...live.map((a) => el("option", {value: a.name}, a.name)));
    if (live.some((a) => a.name === chosen)) select.value = chosen;
  }

  function renderKept() {
    const kept = agentsWhere((a) => a.kept_state);
    $("kept").replaceChildren(...kept.map((a) => el("div", {class: "card", dataset: {kept: a.name}},
      el("div", {class: "card-head"}, el("strong", {}, a.name), ` · ${a.role} · destroyed ${ago(a.updated)}`),
      el("div", {class: "buttons"},
        action("Revive", () => act(`/api/agents/${a.name}/revive`, `reviving ${a.name}`), "primary"),
        action("Purge", () => {
          if (confirm(`Delete ${a.name}'s kept state for good?`)) act(`/api/agents/${a.name}/purge`, `purging ${a.name}`);
        }, "danger")))));
    $("kept-empty").hidden = kept.length > 0;
  }

  function renderDrafts() {
    const drafts = agentsWhere((a) => a.state === "draft");
    $("drafts").replaceChildren(...drafts.map((a) => {
      const asked = [...state.approvals.values()].filter((p) => p.agent === a.name && p.kind === "spawn_commit");
      return el("div", {class: "card", dataset: {draft: a.name}},
        el("div", {class: "card-head"}, el("strong", {}, a.name), ` · staged ${ago(a.updated)}`),
        el("div", {class: "hint"}, asked.length ?
          `committed: approval #${asked[0].id} (${String(asked[0].ref || "").slice(0, 10)}) waits below` :
          "being edited by the manager; not submitted yet"));
    }));
    $("drafts-empty").hidden = drafts.length > 0;
  }

  // Approval and question cards are kept by id, so a half-typed note or answer survives the
  // updates around it.
  function keyed(container, attr, items, build) {
    const have = new Map([...container.children].map((node) => [node.dataset[attr], node]));
    const want = new Set(items.map((item) => String(item.id)));
    for (const [key, node] of have) if (!want.has(key)) node.remove();
    for (const item of items) {
      if (!have.has(String(item.id))) container.append(build(item));
    }
  }

  function renderApprovals() {
    const items = [...state.approvals.values()].sort((a, b) => a.id - b.id);
    keyed($("approvals"), "approval", items, (p) => {
      const note = el("input", {class: "note", placeholder: "note (optional)", maxlength: 2000});
      const result = el("span", {class: "result"});
      const decide = (verb) => async () => {
        result.textContent = `${verb === "approve" ? "approving" : "denying"}…`;
        try {
          await postForm(`/api/approvals/${p.id}/${verb}`, {note: note.value});
          result.textContent = "";
        } catch (error) {
          result.textContent = error.message;
          result.classList.add("error");
        }
      };
      return el("div", {class: "card approval", dataset: {approval: p.id}},
        el("div", {class: "card-head"},
          el("strong", {}, `#${p.id} ${p.kind.replace("_", " ")} ${p.agent}`),
          ` · asked by ${p.requested_by} · ${ago(p.requested)}`,
          p.ref ? el("code", {class: "ref"}, p.ref.slice(0, 12)) : null),
        p.reason ? el("p", {class: "reason"}, `reason: ${p.reason}`) : null,
        p.reason && !p.diff ? null : diffView(p.diff),
        el("div", {class: "buttons"},
          note,
          el("button", {type: "button", class: "primary approve", onclick: decide("approve")}, "Approve"),
          el("button", {type: "button", class: "danger deny", onclick: decide("deny")}, "Deny"),
          result));
    });
    $("approvals-empty").hidden = items.length > 0;
  }

  function renderQuestions() {
    const items = [...state.questions.values()].sort((a, b) => a.id - b.id);
    keyed($("questions"), "question", items, (q) => {
      const text = el("textarea", {class: "answer-text", rows: 2, placeholder: "your answer"});
      const result = el("span", {class: "result"});
      const send = async () => {
        if (!text.value.trim()) { result.textContent = "write an answer first"; return; }
        result.textContent = "sending…";
        try {
          await postForm(`/api/questions/${q.id}/answer`, {text: text.value});
          result.textContent = "";
        } catch (error) {
          result.textContent = error.message;
          result.classList.add("error");
        }
      };
      return el("div", {class: "card question", dataset: {question: q.id}},
        el("div", {class: "card-head"}, el("strong", {}, `#${q.id} ${q.agent} asks`), ` · ${ago(q.asked)}`),
        el("p", {class: "question-text"}, q.question),
        el("div", {class: "buttons"}, text,
          el("button", {type: "button", class: "primary answer", onclick: send}, "Answer"), result));
    });
    $("questions-empty").hidden = items.length > 0;
  }

  function renderFeed() {
    const feed = $("feed");
    const atBottom = feed.scrollTop + feed.clientHeight >= feed.scrollHeight - 4;
    feed.replaceChildren(...state.feed.map((ev) => el("div", {class: `line k-${ev.kind.replace(".", "-")}`},
      el("span", {class: "ts"}, clock(ev.ts)), " ",
      el("span", {class: "who"}, ev.agent || "hive"), " ",
      describe(ev))));
    if (atBottom) feed.scrollTop = feed.scrollHeight;
  }

  function renderCounts() {
    const rows = [...state.agents.values()];
    const live = rows.filter((a) => a.state !== "destroyed" && a.state !== "draft").length;
    $("counts").textContent = `${live} agents · ${state.approvals.size} approvals · ` +
      `${state.questions.size} questions · ${rows.filter((a) => a.state === "draft").length} drafts · ` +
      `${rows.filter((a) => a.kept_state).length} kept`;
  }

  // -- the approval queue chart ------------------------------------------------------------------
  // approvals.pending over the last 24 h (/api/stats?agent=_hive, bucketed by the server), the
  // live count as the newest point. uPlot is loaded on first use (index.html does not load it).
  // window.hiveApprovalChart holds what was drawn (the page tests read it).

  const approvalChart = window.hiveApprovalChart = {plot: null, points: 0, empty: true, error: null, url: null};
  let approvalTimer = null;

  function scheduleApprovalChart() {
    clearTimeout(approvalTimer);
    approvalTimer = setTimeout(loadApprovalChart, 1000);
  }

  function ensureUplot() {
    if (typeof uPlot !== "undefined") return Promise.resolve();
    if (!ensureUplot.loading) {
      document.head.append(el("link", {rel: "stylesheet", href: "/vendor/uplot/uPlot.min.css"}));
      ensureUplot.loading = new Promise((resolve, reject) => {
        document.head.append(el("script", {src: "/vendor/uplot/uPlot.iife.min.js", onload: resolve,
          onerror: () => { ensureUplot.loading = null; reject(new Error("cannot load the chart library")); }}));
      });
    }
    return ensureUplot.loading;
  }

  function approvalBox() {
    let box = $("approval-chart");
    if (!box) {
      box = el("div", {id: "approval-chart", class: "chart approval-chart"});
      const note = el("p", {id: "approval-chart-note", class: "hint"});
      $("approvals-section").querySelector("h2").after(box, note);
    }
    return box;
  }

  async function loadApprovalChart() {
    const box = approvalBox();
    const note = $("approval-chart-note");
    approvalChart.url = "/api/stats?agent=_hive&window=24h&keys=approvals.pending";
    let answer;
    try {
      await ensureUplot();
      answer = await Hive.getJson(approvalChart.url);
    } catch (error) {
      approvalChart.error = error.message;
      note.textContent = `approval queue chart: ${error.message}`;
      note.classList.add("error");
      return;
    }
    approvalChart.error = null;
    note.classList.remove("error");
    const step = answer.step;
    const now = Date.now() / 1000;
    const [ts, values] = answer.data;
    const x0 = Math.floor(answer.since / step) * step;
    const xs = [];
    for (let t = x0; t <= Math.max(now, ...ts); t += step) xs.push(t);
    const at = new Map(xs.map((t, i) => [t, i]));
    const ys = xs.map(() => null);
    ts.forEach((t, i) => { if (at.has(t) && values[i] != null) ys[at.get(t)] = values[i]; });
    const points = ys.filter((v) => v != null).length;
    ys[ys.length - 1] = Math.max(ys[ys.length - 1] ?? 0, state.approvals.size);  // now
    const top = Math.max(...ys.map((v) => v || 0));
    if (approvalChart.plot) approvalChart.plot.destroy();
    box.replaceChildren();
    const width = Math.max(320, Math.min(900, $("approvals-section").clientWidth - 40));
    approvalChart.plot = new uPlot({
      title: "approval queue · last 24 h", width, height: 150,
      scales: {x: {time: true, range: () => [xs[0], xs[xs.length - 1]]}, y: {range: () => [0, Math.max(1, Math.ceil(top * 1.2))]}},
      axes: [{stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}}, {stroke: "#a9b1d6", grid: {stroke: "#2a2e42"}, size: 40}],
      series: [{}, {label: `pending · now ${state.approvals.size} · max ${top}`, stroke: "#bb9af7", width: 2,
        spanGaps: true, paths: uPlot.paths.stepped({align: 1}), points: {show: true, size: 4}}],
    }, [xs, ys], box);
    approvalChart.points = points;
    approvalChart.empty = points === 0;
    box.classList.toggle("empty", approvalChart.empty);
    note.textContent = approvalChart.empty ?
      "no approval-queue samples in the last 24 h yet (the newest point is the live count)" :
      `${step / 60} min per point (the most pending in each)`;
  }

  setInterval(loadApprovalChart, 60000);

  // -- operator actions ------------------------------------------------------------------------

  async function act(url, doing, fields) {
    const result = $("operator-result");
    result.className = "result";
    result.textContent = `${doing}…`;
    try {
      const answer = await postForm(url, fields || {});
      result.textContent = answer && answer.done === false ? answer.note : `done: ${doing}`;
      return true;
    } catch (error) {
      result.textContent = error.message;
      result.className = "result error";
      return false;
    }
  }

  $("spawn-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("spawn-name").value.trim();
    if (await act("/api/spawn", `spawning ${name}`, {name})) $("spawn-name").value = "";
  });

  $("message-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const agent = $("message-agent").value;
    const text = $("message-text").value;
    if (await act("/api/message", `sending to ${agent}`, {agent, text})) $("message-text").value = "";
  });

  // Relative times drift: refresh them now and then.
  setInterval(render, 15000);

  new Live("/ws", {snapshot, event, status}).start();
})();
