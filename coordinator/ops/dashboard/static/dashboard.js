// Offsite dashboard: renders the run store's JSON API; polls while a run goes on.
"use strict";
const Offsite = (() => {
  const POLL_RUNNING_MS = 2000, POLL_IDLE_MS = 10000;
  const COLORS = { plug: "#2563eb", emu: "#d97706", fzs: "#6b7280", ezs: "#a3a3a3",
    loss: "#dc2626", eloss: "#7c3aed", down: "#2563eb", up: "#16a34a", eps: "#9333ea" };

  const $ = (id) => document.getElementById(id);
  const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
  const mb = (b) => (b === null || b === undefined ? "–" : (b / 1e6).toFixed(b >= 1e8 ? 0 : 1));
  const time = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;
  // A running run whose heartbeat is older than its round-timeout has lost its coordinator.
  const shownStatus = (run) => (run.stale ? "stale" : run.status);

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  function live(text) { $("live").textContent = text; }

  // --- index page -------------------------------------------------------------------------
  async function indexPage() {
    const tick = async () => {
      try {
        const data = await getJSON("/api/runs");
        $("store").textContent = `store: ${data.store}`;
        $("empty").hidden = data.runs.length > 0;
        $("runs").querySelector("tbody").innerHTML = data.runs.map((r) => `<tr>
          <td><a href="/runs/${r.id}">${esc(r.name)}</a></td><td>${badge(shownStatus(r))}</td>
          <td>${r.current_round}/${r.rounds_planned}${r.active_round ? ` (round ${r.active_round} under way)` : ""}</td>
          <td>${time(r.started_at)}</td><td>${time(r.updated_at)}</td><td class="muted">${esc(r.run_dir)}</td></tr>`).join("");
        live(`updated ${new Date().toLocaleTimeString()}`);
      } catch (e) { live(`offline: ${e.message}`); }
      setTimeout(tick, POLL_RUNNING_MS);
    };
    tick();
  }

  // --- charts -------------------------------------------------------------------------------
  const xAxis = { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, v) => v.map((x) => String(x)) };
  const xScale = { time: false, range: (u, min, max) => [Math.min(min, 1) - 0.5, Math.max(max, 1) + 0.5] };

  function makeChart(el, series, yLabel, yRange) {
    const width = Math.max(320, el.clientWidth - 4);
    const opts = {
      width, height: 230, scales: { x: xScale, y: yRange ? { range: yRange } : {} },
      series: [{ label: "round" }, ...series], axes: [xAxis, { label: yLabel }],
      legend: { live: true }, cursor: { drag: { x: false, y: false } },
    };
    const data = [[], ...series.map(() => [])];
    return new uPlot(opts, data, el);
  }
  const line = (label, stroke, extra = {}) => ({ label, stroke, width: 2, spanGaps: true, points: { show: true, size: 6 }, ...extra });
  const bars = (label, fill, align) => ({ label, stroke: fill, fill, width: 1, paths: uPlot.paths.bars({ size: [0.35, 60], align }), points: { show: false } });

  // --- run page --------------------------------------------------------------------------
  function runPage() {
    const runId = location.pathname.split("/").filter(Boolean).pop();
    let charts = null, last = "";

    function ensureCharts() {
      if (charts) return charts;
      charts = {
        acc: makeChart($("chart-acc"), [line("plug-in", COLORS.plug), line("emulator FT", COLORS.emu),
          line("full zero-shot", COLORS.fzs, { dash: [6, 4], points: { show: false } }),
          line("emulator zero-shot", COLORS.ezs, { dash: [2, 4], points: { show: false } })], "accuracy %", [0, 100]),
        loss: makeChart($("chart-loss"), [line("train loss (emulator, clients)", COLORS.loss),
          line("client eval loss (plug-in adapter on emulator)", COLORS.eloss)], "loss"),
        bytes: makeChart($("chart-bytes"), [bars("down", COLORS.down, -1), bars("up", COLORS.up, 1)], "MB",
          (u, min, max) => [0, Math.max(1, max) * 1.1]),
        eps: makeChart($("chart-eps"), [line("ε", COLORS.eps)], "ε"),
      };
      return charts;
    }

    function render(d) {
      const run = d.run, rounds = d.rounds;
      document.title = `Offsite · ${run.name}`;
      $("title").textContent = run.name;
      $("status").className = `badge ${shownStatus(run)}`;
      $("status").textContent = shownStatus(run);
      const active = run.active_round ? ` · round ${run.active_round} under way` : "";
      $("progress").textContent = `round ${run.current_round}/${run.rounds_planned}${active}`;

      // A failed or stopped run says why at the top, not only in the event list at the bottom.
      const ended = run.status === "failed" || run.status === "stopped";
      $("failure").hidden = !ended && !run.stale;
      if (ended) {
        $("failure-title").textContent = run.status === "failed" ? "Run failed" : "Run stopped";
        const lastEvent = d.events.length ? d.events[0].message : "";
        $("failure-reason").textContent = run.error || lastEvent || "no reason was recorded";
      } else if (run.stale) {
        $("failure-title").textContent = "Coordinator gone";
        $("failure-reason").textContent = `No heartbeat for ${fmt(run.heartbeat_age_s, 0)} s (round-timeout ${fmt(run.stale_after_s, 0)} s): ` +
          "the coordinator was killed or lost the run store. Restart it with resume=true to continue from the last checkpoint.";
      }

      const f = d.five_numbers;
      $("five").innerHTML = Object.entries(f).map(([k, v]) =>
        `<tr><td>${esc(k)}</td><td data-key="${esc(k)}">${fmt(v)}</td></tr>`).join("");
      const c = d.checks;
      $("checks").innerHTML = c ? `plug-in − emulator FT <b class="${c.plugin_minus_emulator_ft > 0 ? "good" : "bad"}">${fmt(c.plugin_minus_emulator_ft, 1)}</b> pts ·
        plug-in − full zero-shot <b class="${c.plugin_minus_full_zero_shot > 0 ? "good" : "bad"}">${fmt(c.plugin_minus_full_zero_shot, 1)}</b> pts ·
        emulator/full zero-shot ${fmt(c.cpl_ratio, 2)}` : `<span class="muted">after the first round</span>`;

      $("privacy").textContent = d.privacy.dp ? `ε = ${fmt(d.privacy.epsilon, 3)}` : "DP off";
      $("privacy-note").textContent = d.privacy.dp ? "spent so far, from the accountant" : "client updates are not noised in this run";

      const walls = rounds.map((r) => r.wall_s).filter((x) => x !== null);
      $("traffic").innerHTML = [
        ["down, total", `${mb(d.bytes.down)} MB`], ["up, total", `${mb(d.bytes.up)} MB`],
        ["stand-in (sent once)", `${mb(d.bytes.standin)} MB`],
        ["mean round wall", walls.length ? `${fmt(walls.reduce((a, b) => a + b, 0) / walls.length)} s` : "–"],
      ].map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");

      const cfg = run.config || {}, st = run.standin || {};
      $("config").innerHTML = [
        ["model", cfg.model], ["task", cfg.task], ["stand-in", `${cfg.emulator ?? "–"} ${st.layout ? "[" + st.layout.join(",") + "]" : ""}`],
        ["clients/round", cfg["clients-per-round"]], ["local steps", cfg["local-steps"]],
        ["strategy", `${cfg.strategy ?? "–"} / ${cfg.codec ?? "–"}`], ["started", time(run.started_at)],
      ].map(([k, v]) => `<tr><td>${k}</td><td>${esc(v ?? "–")}</td></tr>`).join("");

      const xs = rounds.map((r) => r.round), base = run.baseline || {};
      const ch = ensureCharts();
      ch.acc.setData([xs, rounds.map((r) => r.plugin_acc), rounds.map((r) => r.emulator_ft_acc),
        xs.map(() => base["full zero-shot"] ?? null), xs.map(() => base["emulator zero-shot"] ?? null)]);
      ch.loss.setData([xs, rounds.map((r) => r.train_loss), rounds.map((r) => r.client_eval_loss)]);
      ch.bytes.setData([xs, rounds.map((r) => r.bytes_down / 1e6), rounds.map((r) => r.bytes_up / 1e6)]);
      ch.eps.setData([xs, rounds.map((r) => r.epsilon)]);
      $("chart-eps").hidden = !d.privacy.dp;
      $("eps-off").hidden = d.privacy.dp;
      if (d.privacy.dp) ch.eps.setSize({ width: Math.max(320, $("chart-eps").clientWidth - 4), height: 230 });

      renderClients(run, d.clients);
      $("rounds").querySelector("tbody").innerHTML = rounds.slice().reverse().map((r) => `<tr>
        <td>${r.round}</td><td>${r.replies}/${r.clients}</td><td>${fmt(r.plugin_acc)}</td><td>${fmt(r.emulator_ft_acc)}</td>
        <td>${fmt(r.train_loss, 3)}</td><td>${r.epsilon === null ? "DP off" : fmt(r.epsilon, 3)}</td>
        <td>${mb(r.bytes_down)}</td><td>${mb(r.bytes_up)}</td><td>${fmt(r.wall_s)}</td><td>${fmt(r.train_s)}</td></tr>`).join("");
      $("events").innerHTML = d.events.map((e) =>
        `<li><span class="t">${new Date(e.at * 1000).toLocaleTimeString()}</span>${esc(e.message)}</li>`).join("");
    }

    function renderClients(run, clients) {
      const byKey = new Map(clients.map((c) => [`${c.round}/${c.node}`, c]));
      const activeNodes = run.active_nodes || [];
      const nodes = [...new Set([...clients.map((c) => c.node), ...activeNodes])].sort();
      const maxRound = Math.max(run.current_round, run.active_round || 0);
      const rounds = Array.from({ length: maxRound }, (_, i) => i + 1);
      if (!nodes.length) { $("clients").innerHTML = `<p class="muted">No round has started yet.</p>`; return; }
      const head = `<tr><th class="node">node</th>${rounds.map((r) => `<th>r${r}</th>`).join("")}</tr>`;
      const body = nodes.map((n) => `<tr><th class="node" title="${esc(n)}">…${esc(n.slice(-6))}</th>${rounds.map((r) => {
        const c = byKey.get(`${r}/${n}`);
        if (c) {
          const tip = `round ${r}, node ${n}: ${c.status}${c.reason ? " (" + c.reason + ")" : ""}; down ${mb(c.bytes_down)} MB${c.standin_sent ? " incl. stand-in" : ""}, up ${mb(c.bytes_up)} MB; examples ${c.num_examples ?? "–"}, loss ${fmt(c.loss, 3)}, ${fmt(c.train_s)} s, peak ${fmt(c.peak_mem_mb, 0)} MiB`;
          return `<td><div class="cell ${esc(c.status)}" title="${esc(tip)}" aria-label="training loss">${c.status === "ok" ? fmt(c.loss, 2) : esc(c.status.slice(0, 4))}</div></td>`;
        }
        if (r === run.active_round && activeNodes.includes(n)) return `<td><div class="cell training" title="round ${r}, node ${esc(n)}: training">…</div></td>`;
        return `<td><div class="cell none" title="not sampled"></div></td>`;
      }).join("")}</tr>`).join("");
      $("clients").innerHTML = `<table>${head}${body}</table>`;
    }

    const tick = async () => {
      let delay = POLL_RUNNING_MS;
      try {
        const d = await getJSON(`/api/runs/${runId}`);
        const key = JSON.stringify([d.run.updated_at, d.run.status, d.run.stale, d.rounds.length, d.run.active_round]);
        if (key !== last) { render(d); last = key; }
        if (d.run.status !== "running") delay = POLL_IDLE_MS;
        live(`${d.run.status === "running" ? "live" : "idle"} · updated ${new Date().toLocaleTimeString()}`);
        document.body.dataset.rounds = String(d.rounds.length);
        document.body.dataset.status = shownStatus(d.run);
      } catch (e) { live(`offline: ${e.message}`); }
      setTimeout(tick, delay);
    };
    tick();
    window.addEventListener("resize", () => {
      if (!charts) return;
      for (const [name, u] of Object.entries(charts)) u.setSize({ width: Math.max(320, $(`chart-${name}`).clientWidth - 4), height: 230 });
    });
  }

  return { indexPage, runPage };
})();
