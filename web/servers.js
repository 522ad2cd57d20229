// The agent page's MCP SERVERS section: the agent's own servers (its agent.toml's [mcp.<name>]
// tables) and how each fared at its last turn, from GET /api/servers; refreshed when a turn
// ends or the agent restarts (the page's live events, see Hive.Live).
"use strict";

(() => {
  const {el, getJson} = Hive;
  const body = document.querySelector("#servers tbody");
  const note = document.getElementById("servers-note");
  let pending = null;

  function stateClass(status) {
    if (status === "connected") return "state st-ok";
    if (status === "failed") return "state st-bad";
    return "state st-off";
  }

  function render(answer) {
    body.replaceChildren(...answer.servers.map((s) => el("tr", {dataset: {server: s.name}},
      el("td", {class: "mono", title: `its tools: ${s.tools}`}, s.name,
        s.required ? el("span", {class: "hint"}, " required") : null),
      el("td", {}, el("span", {class: stateClass(s.status)}, s.status)),
      el("td", {class: "mono"}, s.allow.length ? s.allow.join(", ") : "none (every call asks)"),
      el("td", {class: "mono", title: s.env.length ? `environment: ${s.env.join(", ")}` : ""},
        [s.command, ...s.args].join(" ")))));
    if (answer.error) note.textContent = `agent.toml: ${answer.error}`;
    else if (!answer.servers.length) note.textContent = "no servers besides the hive's own";
    else if (answer.last_turn) note.textContent = `as of the last turn (${answer.last_turn.outcome})`;
    else note.textContent = "no turn has started them yet";
    note.classList.toggle("error", Boolean(answer.error));
  }

  async function refresh() {
    pending = null;
    try {
      render(await getJson("/api/servers"));
    } catch (error) {
      note.textContent = `cannot read the servers: ${error.message}`;
      note.classList.add("error");
    }
  }

  document.addEventListener("hive:event", (e) => {
    const kind = e.detail.kind;
    if ((kind === "turn.ended" || kind === "agent.spawned") && pending === null) {
      pending = setTimeout(refresh, 200);
    }
  });
  refresh();
})();
