// The kiln dashboard: chat, the knowledge ledger, bakes (with KL curves), versions and feeds of
// one agent at a time, over the server's OpenAI-compatible and admin APIs.
import { api, stream, onTokenNeeded, getToken, setToken } from "./api.js";
import { lineChart } from "./chart.js";

const $ = (sel) => document.querySelector(sel);

const state = {
  agents: [],
  agent: null,
  tab: "chat",
  /** chat history per agent: [{role, content}] */
  chats: new Map(),
  chatAbort: null,
  eventsAbort: null,
  selectedBake: null,
  live: { steps: [], val: [] },
  signature: "",
  /** "ok", "offline" (the server cannot be reached) or "token" (it wants a token we do not have) */
  conn: "ok",
  /** the user closed the token dialog: polling must not reopen it */
  tokenDeclined: false,
  /** items shown in the ledger table (more are loaded with "Show more") */
  itemLimit: 100,
  /** versions shown in the versions table, newest first (more are loaded with "Show more") */
  versionLimit: 100,
  openItem: null,
};

// --- small helpers ---

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

const enc = encodeURIComponent;
const agentPath = (suffix = "") => `/admin/agents/${enc(state.agent)}${suffix}`;

/** A link target from untrusted data (feed items): only http(s) URLs, never javascript: or data:. */
function safeHref(link) {
  if (typeof link !== "string" || !link) return null;
  try {
    const url = new URL(link, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** A table cell with a relative time that the clock keeps current (see tickTimes). */
function agoCell(iso) {
  return h("td", { title: iso ?? "", "data-at": iso ?? "" }, ago(iso));
}

function tickTimes() {
  for (const el of document.querySelectorAll("[data-at]")) if (el.dataset.at) el.textContent = ago(el.dataset.at);
}

function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return new Date(iso).toLocaleDateString();
}

function num(v, digits = 2) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
}

function kl(v) {
  return typeof v === "number" && Number.isFinite(v) ? v.toPrecision(3) : "–";
}

function seconds(from, to) {
  if (!from || !to) return "–";
  const s = (new Date(to) - new Date(from)) / 1000;
  return s < 90 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`;
}

function badge(status) {
  return h("span", { class: `status ${status}` }, status);
}

let toastTimer;
function toast(message, bad = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = `show${bad ? " bad" : ""}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.className = ""), bad ? 6000 : 3000);
}

/** What a failed call means to the person at the page ("Failed to fetch" says little). */
function errorText(err) {
  if (err instanceof TypeError) return "the kiln server cannot be reached (stopped, restarting, or the network is down)";
  return err.message;
}

async function attempt(fn) {
  try {
    return await fn();
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    // While the server is away the banner says so; a toast per failed call would only repeat it.
    if (!(err instanceof TypeError && state.conn === "offline")) toast(errorText(err), true);
    return undefined;
  }
}

// --- token ---

let tokenPrompt = null;
onTokenNeeded((message) => {
  if (state.tokenDeclined) return Promise.resolve(null);
  tokenPrompt ??= new Promise((resolve) => {
    const dialog = $("#token-dialog");
    $("#token-error").textContent = getToken() ? `The token was not accepted (${message}).` : "";
    $("#token-input").value = "";
    dialog.addEventListener(
      "close",
      () => {
        tokenPrompt = null;
        const token = dialog.returnValue === "ok" ? $("#token-input").value.trim() : ""; // Cancel and Escape give none
        if (!token) state.tokenDeclined = true; // asked again only from the "Enter token" button
        resolve(token || null);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    $("#token-input").focus();
  });
  return tokenPrompt;
});
function changeToken() {
  setToken("");
  state.tokenDeclined = false;
  refreshAgents();
}
$("#token-button").addEventListener("click", changeToken);
$("#token-cancel").addEventListener("click", () => $("#token-dialog").close("cancel"));
$("#conn-token").addEventListener("click", changeToken);
$("#conn-retry").addEventListener("click", () => refreshAgents());

/** The banner over the page when the server is away or wants a token. */
function setConn(conn, detail = "") {
  state.conn = conn;
  const banner = $("#conn-banner");
  banner.hidden = conn === "ok";
  banner.dataset.conn = conn;
  $("#conn-text").textContent =
    conn === "offline"
      ? `The kiln server cannot be reached${detail ? ` (${detail})` : ""}. Retrying every 5 seconds; what this page shows may be out of date.`
      : conn === "token"
        ? "This server needs a bearer token (the one given to kiln serve --token or KILN_TOKEN). Nothing can be shown without it."
        : "";
  $("#conn-token").hidden = conn !== "token";
  $("#conn-retry").hidden = conn !== "offline";
  $("#conn").textContent = conn === "offline" ? "offline" : conn === "token" ? "no token" : "";
  document.body.classList.toggle("disconnected", conn !== "ok");
}

// --- agents and header ---

async function refreshAgents() {
  let data;
  try {
    data = await api("/admin/agents");
  } catch (err) {
    if (err.status === 401) setConn("token");
    else if (err instanceof TypeError) setConn("offline");
    else if (err.name !== "AbortError") toast(errorText(err), true);
    return;
  }
  const wasOffline = state.conn !== "ok";
  setConn("ok");
  $("#token-button").classList.toggle("hidden", !getToken());
  if (wasOffline && state.agent) {
    state.signature = "";
    refreshTab();
  }
  state.agents = data.agents;
  const select = $("#agent");
  const names = data.agents.map((a) => a.name);
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  }
  if (!state.agent || !names.includes(state.agent)) {
    const fromHash = decodeURIComponent(location.hash.slice(1));
    selectAgent(names.includes(fromHash) ? fromHash : names[0]);
    return;
  }
  select.value = state.agent;
  renderHeader();
}

function current() {
  return state.agents.find((a) => a.name === state.agent);
}

function renderHeader() {
  const a = current();
  if (!a) return;
  $("#live-version").textContent = a.live;
  $("#bake-badge").classList.toggle("hidden", !a.baking);
  $("#pending-count").textContent = [a.counts.baking ? `${a.counts.baking} baking` : null, `${a.counts.pending} pending`, `${a.counts.absorbed} absorbed`].filter(Boolean).join(" · ");
  renderAlerts(a);
  syncIdleButtons();
  const signature = JSON.stringify([a.live, a.baking, a.counts, a.bakes, a.versions, a.feeds.map((f) => [f.lastPolledAt, f.itemsAdded])]);
  if (signature !== state.signature) {
    const first = !state.signature;
    state.signature = signature;
    if (!first) refreshTab();
  }
}

/** The live version that failed to load, and a retraction's rebuild that failed: said above the tabs until they clear. */
function renderAlerts(a) {
  const lines = [];
  if (a.problem) lines.push(a.problem);
  const owed = a.rebuildOwed;
  if (owed) {
    const holds = owed.liveHolds.length ? `the live weights still hold ${owed.liveHolds.length} retracted item(s): ${owed.liveHolds.join(", ")}` : "the live weights hold no retracted item";
    const next = owed.retryAt ? `tried again by itself at ${new Date(owed.retryAt).toLocaleString()}` : "no tries left: the next retraction (or a restart) rebuilds it";
    lines.push(`A retraction's rebuild failed (${owed.attempts} ${owed.attempts === 1 ? "try" : "tries"}; last: ${owed.lastError}); ${holds}; ${next}.`);
  }
  const box = $("#agent-alert");
  box.hidden = !lines.length;
  box.replaceChildren(...lines.map((text) => h("p", {}, text)));
}

/** Retract and roll back answer 409 while a bake runs: say so on the buttons instead. */
function syncIdleButtons() {
  const baking = !!current()?.baking;
  for (const b of document.querySelectorAll("[data-needs-idle]")) {
    b.disabled = baking;
    if (baking) b.title = "a bake is running; wait until it ends";
    else b.removeAttribute("title");
  }
}

function selectAgent(name) {
  if (!name) return;
  state.agent = name;
  state.signature = "";
  state.selectedBake = null;
  state.itemLimit = 100;
  state.versionLimit = 100;
  $("#agent").value = name;
  history.replaceState(null, "", `#${enc(name)}`);
  renderHeader();
  renderChat();
  refreshTab();
  watchBakes();
}

$("#agent").addEventListener("change", (e) => selectAgent(e.target.value));

// --- tabs ---

for (const b of document.querySelectorAll(".tabs button")) {
  b.addEventListener("click", () => {
    state.tab = b.dataset.tab;
    for (const x of document.querySelectorAll(".tabs button")) {
      x.classList.toggle("active", x === b);
      x.setAttribute("aria-selected", String(x === b));
    }
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${state.tab}`);
    refreshTab();
  });
}

function refreshTab() {
  if (!state.agent) return;
  if (state.tab === "knowledge") refreshItems({ keep: true });
  if (state.tab === "bakes") refreshBakes();
  if (state.tab === "versions") refreshVersions();
  if (state.tab === "feeds") refreshFeeds();
}

// --- chat ---

function chatOf(name) {
  if (!state.chats.has(name)) state.chats.set(name, []);
  return state.chats.get(name);
}

function bubble(role, text, meta) {
  return h("div", { class: `msg ${role}` }, h("span", { class: "text" }, text), meta ? h("span", { class: "meta" }, meta) : null);
}

function renderChat() {
  const log = $("#chat-log");
  const msgs = chatOf(state.agent);
  log.replaceChildren(...(msgs.length ? msgs.map((m) => bubble(m.role, m.content, m.meta)) : [$("#chat-empty") ?? h("p", { class: "empty" }, "Ask the agent something.")]));
}

async function sendChat(text) {
  const agent = state.agent;
  const msgs = chatOf(agent);
  msgs.push({ role: "user", content: text });
  const log = $("#chat-log");
  $("#chat-empty")?.remove();
  log.append(bubble("user", text));
  const reply = bubble("assistant", "");
  reply.classList.add("streaming");
  log.append(reply);
  log.scrollTop = log.scrollHeight;
  const textEl = reply.querySelector(".text");
  const abort = new AbortController();
  state.chatAbort = abort;
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  const t0 = performance.now();
  let content = "";
  let finish = null;
  let usage = null;
  let kiln = null;
  try {
    const body = {
      model: agent,
      messages: msgs.map(({ role, content }) => ({ role, content })),
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Number($("#chat-max").value) || undefined,
      temperature: Number($("#chat-temp").value),
    };
    for await (const ev of stream("/v1/chat/completions", { method: "POST", body, signal: abort.signal })) {
      if (ev.data === "[DONE]") break;
      const chunk = JSON.parse(ev.data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        content += choice.delta.content;
        textEl.textContent = content;
        log.scrollTop = log.scrollHeight;
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
      if (chunk.kiln) kiln = chunk.kiln;
    }
    const secs = (performance.now() - t0) / 1000;
    const parts = [`${kiln?.version ?? "base"}`, usage ? `${usage.completion_tokens} tokens` : null, finish, `${secs.toFixed(1)}s`];
    if (kiln?.captured?.length) parts.push(`noted: ${kiln.captured.join("; ")}`);
    const meta = parts.filter(Boolean).join(" · ");
    reply.append(h("span", { class: "meta", "data-version": kiln?.version ?? "base" }, meta));
    msgs.push({ role: "assistant", content, meta });
    if (kiln?.captured?.length) refreshAgents();
  } catch (err) {
    if (err.name === "AbortError") {
      reply.append(h("span", { class: "meta" }, "stopped"));
      msgs.push({ role: "assistant", content, meta: "stopped" });
    } else {
      reply.classList.add("error");
      textEl.textContent = content ? `${content}\n\n(${errorText(err)})` : errorText(err);
      msgs.pop(); // the user's message, so a retry does not send it twice
    }
  } finally {
    reply.classList.remove("streaming");
    state.chatAbort = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
  }
}

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || state.chatAbort) return;
  $("#chat-input").value = "";
  sendChat(text);
});
$("#chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("#chat-form").requestSubmit();
  }
});
$("#chat-stop").addEventListener("click", () => state.chatAbort?.abort());
$("#chat-clear").addEventListener("click", () => {
  state.chatAbort?.abort();
  state.chats.set(state.agent, []);
  renderChat();
});

// --- knowledge ---

function sourceOf(item) {
  const s = item.source || {};
  const href = safeHref(s.link);
  // a removed feed's items carry its URL: its id may name another feed now
  const feed = s.feedUrl === undefined ? s.feedId : `${s.feedId} (removed feed${s.feedUrl ? ` ${s.feedUrl}` : ""})`;
  if (s.feedId) return href ? h("a", { href, target: "_blank", rel: "noreferrer" }, feed) : feed;
  if (s.conversationId) return `chat ${s.conversationId}`;
  if (s.by) return s.by;
  return item.kind;
}

function absorbedCell(item) {
  if (!item.absorbedBy) return h("td", {}, "–");
  // A pending, superseded or retracted item keeps the version that once absorbed it: say "was".
  if (item.status === "absorbed") return h("td", {}, item.absorbedBy);
  return h("td", { class: "muted", title: `absorbed by ${item.absorbedBy} before it became ${item.status}` }, `was ${item.absorbedBy}`);
}

function itemDetail(item) {
  const s = item.source || {};
  const href = safeHref(s.link);
  const facts = [
    ["id", h("code", {}, item.id)],
    ["kind", item.kind],
    ["status", badge(item.status)],
    ["created", new Date(item.createdAt).toLocaleString()],
    ["source", [sourceOf(item), s.publishedAt ? ` · published ${new Date(s.publishedAt).toLocaleString()}` : null, href ? h("div", { class: "muted url" }, href) : null]],
    ["held by", item.heldBy?.length ? item.heldBy.join(", ") : "no version"],
  ];
  const probes = item.probes ?? [];
  const scores = item.scores ?? [];
  return h(
    "div",
    { class: "item-detail" },
    h("dl", { class: "metrics" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h4", {}, `Probes (${probes.length})`),
    probes.length ? h("ul", { class: "probes" }, probes.map((p) => h("li", {}, h("span", {}, p.question), " → ", h("span", { class: "muted" }, p.answer)))) : h("p", { class: "empty" }, "None yet: probes are written when the item is first baked."),
    h("h4", {}, `Scores (${scores.length})`),
    scores.length
      ? h(
          "table",
          { class: "grid compact scores" },
          h("thead", {}, h("tr", {}, h("th", {}, "version"), h("th", {}, "unprompted"), h("th", {}, "prompted"), h("th", {}, "KL / token"))),
          h("tbody", {}, scores.map((sc) => h("tr", {}, h("td", {}, sc.version), h("td", { class: "score" }, num(sc.unprompted)), h("td", { class: "score" }, num(sc.prompted)), h("td", { class: "score" }, kl(sc.kl))))),
        )
      : h("p", { class: "empty" }, "Not scored yet."),
    h("h4", {}, "History"),
    h(
      "ol",
      { class: "history" },
      (item.history ?? []).map((e) => h("li", {}, h("span", { class: "muted", title: e.at }, new Date(e.at).toLocaleString()), " ", badge(e.status), e.version ? ` ${e.version}` : null, e.reason ? h("div", { class: "reason" }, e.reason) : null)),
    ),
  );
}

function itemRows(item) {
  const score = item.latestScore;
  const open = state.openItem === item.id;
  const detailId = `item-detail-${item.id}`;
  const toggle = h(
    "button",
    {
      type: "button",
      class: "linklike",
      "aria-expanded": String(open),
      "aria-controls": detailId,
      title: "show probes, scores and history",
      onclick: () => {
        state.openItem = open ? null : item.id;
        refreshItems({ keep: true });
      },
    },
    item.text,
  );
  const row = h(
    "tr",
    { "data-id": item.id, class: open ? "open" : "" },
    h("td", { class: "text" }, toggle),
    h("td", {}, item.kind),
    h("td", {}, badge(item.status)),
    absorbedCell(item),
    h("td", { class: "score", title: score ? `at ${score.version}: unprompted / prompted` : "not scored yet" }, score ? `${num(score.unprompted)} / ${num(score.prompted)}` : "–"),
    h("td", {}, sourceOf(item)),
    agoCell(item.updatedAt),
    h("td", {}, item.status === "retracted" ? "" : h("button", { class: "small danger", type: "button", "data-needs-idle": "", "aria-label": `Retract: ${item.text.slice(0, 80)}`, onclick: () => retract(item) }, "Retract")),
  );
  if (!open) return [row];
  return [row, h("tr", { class: "detail-row", id: detailId, "data-detail": item.id }, h("td", { colspan: 8 }, itemDetail(item)))];
}

async function refreshItems({ keep = false, more = false } = {}) {
  if (!keep && !more) state.itemLimit = 100;
  if (more) state.itemLimit += 100;
  const params = new URLSearchParams();
  if ($("#item-status").value) params.set("status", $("#item-status").value);
  if ($("#item-search").value.trim()) params.set("q", $("#item-search").value.trim());
  params.set("limit", String(state.itemLimit));
  const data = await attempt(() => api(agentPath(`/items?${params}`)));
  if (!data) return;
  const shown = data.items.length;
  $("#item-total").textContent = shown < data.total ? `showing ${shown} of ${data.total} items` : `${data.total} item${data.total === 1 ? "" : "s"}`;
  const rows = data.items.flatMap(itemRows);
  $("#items-table tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No items."))]));
  const moreButton = $("#items-more");
  moreButton.hidden = shown >= data.total;
  moreButton.textContent = `Show ${Math.min(100, data.total - shown)} more (${data.total - shown} not shown)`;
  syncIdleButtons();
}

async function retract(item) {
  if (!confirm(`Retract “${item.text}”?\n\nThe agent stops answering from weights that hold it at once, and its weights are rebuilt from the base model over what is still true.`)) return;
  const r = await attempt(() => api(agentPath(`/items/${enc(item.id)}/retract`), { method: "POST", body: {} }));
  if (r) toast(`Retracted; consolidation bake ${r.bake.bakeId ?? r.bake.status}`);
  refreshItems({ keep: true });
  refreshAgents();
}

$("#remember-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("#remember-text").value.trim();
  if (!text) return;
  const r = await attempt(() => api(agentPath("/items"), { method: "POST", body: { text } }));
  if (!r) return;
  $("#remember-text").value = "";
  toast(r.added ? "Remembered: it will be baked in the next bake." : `Already known (${r.item.status}).`);
  refreshItems();
  refreshAgents();
});

// Proof on demand: the absorbed items' probes asked on the live weights now.
$("#verify").addEventListener("click", async () => {
  const button = $("#verify");
  button.disabled = true;
  button.textContent = "Verifying…";
  const r = await attempt(() => api(agentPath("/verify"), { method: "POST", body: {} }));
  button.disabled = false;
  button.textContent = "Verify live weights";
  if (!r) return;
  const failed = r.items.filter((i) => !i.held);
  const probe = (p) => h("li", {}, `${p.question} → ${p.answer}`, p.passed ? "" : h("span", { class: "muted" }, ` (expected: ${p.expected})`));
  $("#verify-result").replaceChildren(
    h("p", { class: failed.length ? "warn" : "ok" }, `${r.held} of ${r.items.length} absorbed item(s) held by ${r.version === "base" ? "the base model" : r.version}, asked just now with nothing in the prompt.`),
    // which weights answered, so the proof can be asked again elsewhere (kiln generate --adapter)
    h("p", { class: "muted weights" }, r.weights.adapter ? `adapter ${r.weights.adapter.file}, sha256 ${r.weights.adapter.sha256}; base ${r.weights.baseModel} (fingerprint ${r.weights.baseFingerprint})` : `the base model ${r.weights.baseModel} (fingerprint ${r.weights.baseFingerprint}), no adapter`),
    ...failed.map((i) => h("div", { class: "verify-item", "data-id": i.id }, h("strong", {}, i.text), h("ul", {}, i.probes.map(probe)))),
  );
  $("#verify-result").hidden = false;
});

let searchTimer;
$("#item-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => refreshItems(), 250);
});
$("#item-status").addEventListener("change", () => refreshItems());
$("#items-more").addEventListener("click", () => refreshItems({ more: true }));

// --- bakes ---

function bakeChart(bake) {
  const history = bake.history ?? [];
  const initial = Number(bake.metrics?.initialValKl);
  const val = history.map((e) => [e.epoch, e.valKlPerToken]);
  if (Number.isFinite(initial)) val.unshift([0, initial]);
  return lineChart({
    title: `KL per token by epoch, bake ${bake.id}`,
    xLabel: "epoch",
    yLabel: "KL / token",
    series: [
      { name: "train KL", cls: "train", points: history.map((e) => [e.epoch, e.trainKlPerToken]) },
      { name: "validation KL", cls: "val", points: val },
    ],
  });
}

function renderBakeDetail(bake) {
  const card = $("#bake-detail");
  if (!bake) {
    card.replaceChildren(h("p", { class: "empty" }, "No bakes yet."));
    return;
  }
  const m = bake.metrics ?? {};
  const facts = [
    ["status", badge(bake.status)],
    ["trigger", bake.trigger],
    ["parent", bake.parent ?? "base"],
    ["version", bake.version ?? "–"],
    ["new items", bake.itemIds.length],
    ["replayed", bake.replayIds.length],
    ["absorption", num(m.absorption)],
    ["retention", num(m.retention)],
    ["val KL", `${kl(m.initialValKl)} → ${kl(m.bestValKl)}`],
    ["trained tokens", m.trainedTokens ?? "–"],
    ["tokens/s", num(m.tokensPerSecond, 0)],
    ["took", seconds(bake.startedAt, bake.finishedAt)],
  ];
  const reasons = [...(bake.reasons ?? []), ...(bake.error ? [bake.error] : [])];
  card.replaceChildren(
    h("h3", {}, `Bake ${bake.id}`),
    h(
      "div",
      { class: "detail" },
      bake.history?.length ? h("div", { class: "chart", id: "bake-chart", "data-bake": bake.id }, bakeChart(bake)) : h("p", { class: "empty" }, bake.status === "running" ? "Running: the curve appears when it ends." : "No training history."),
      h("div", {}, h("dl", { class: "metrics" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])), reasons.length ? h("ul", { class: "error" }, reasons.map((r) => h("li", {}, r))) : null),
    ),
  );
}

async function refreshBakes() {
  const data = await attempt(() => api(agentPath("/bakes")));
  if (!data) return;
  const bakes = data.bakes;
  if (!bakes.some((b) => b.id === state.selectedBake)) state.selectedBake = (bakes.find((b) => b.history?.length) ?? bakes[0])?.id ?? null;
  const rows = bakes.map((b) =>
    h(
      "tr",
      { class: `selectable${b.id === state.selectedBake ? " selected" : ""}`, "data-id": b.id, onclick: () => ((state.selectedBake = b.id), refreshBakes()) },
      h("td", {}, h("button", { type: "button", class: "linklike", "aria-pressed": String(b.id === state.selectedBake), title: "show this bake's curve and metrics" }, b.id)),
      h("td", {}, b.trigger),
      h("td", {}, badge(b.status)),
      agoCell(b.startedAt),
      h("td", {}, seconds(b.startedAt, b.finishedAt)),
      h("td", {}, b.version ?? "–"),
      h("td", { class: "score" }, num(b.metrics?.absorption)),
      h("td", { class: "score" }, num(b.metrics?.retention)),
      h("td", { class: "score" }, kl(b.metrics?.bestValKl)),
    ),
  );
  $("#bakes-table tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No bakes yet."))]));
  renderBakeDetail(bakes.find((b) => b.id === state.selectedBake));
}

$("#bake-start").addEventListener("click", async () => {
  const r = await attempt(() => api(agentPath("/bakes"), { method: "POST", body: { force: $("#bake-force").checked } }));
  if (!r) return;
  if (r.status === "running") toast(r.joined ? `A bake is already running (${r.bakeId}).` : `Bake ${r.bakeId} started.`);
  else toast(`Nothing baked: ${r.reasons?.join("; ") || r.status}`);
  refreshAgents();
});

function phaseText(p) {
  if (!p) return "starting";
  if (p.phase === "train") return `training: epoch ${p.epoch}, step ${p.step}/${p.totalSteps}, KL/token ${kl(p.klPerToken)}`;
  if (p.phase === "validate") return `validation${p.epoch === 0 ? " before training" : `: epoch ${p.epoch}`}, KL/token ${kl(p.valKlPerToken)}`;
  const names = { probes: "writing probes", sample: "sampling replies", teacher: "teacher logits", evaluate: "scoring" };
  return `${names[p.phase] ?? p.phase}: ${p.done}/${p.total}`;
}

function renderLive(p) {
  $("#bake-live").classList.remove("hidden");
  $("#bake-phase").textContent = phaseText(p);
  let share = 0;
  if (p?.phase === "train") share = p.step / Math.max(1, p.totalSteps);
  else if (p && "done" in p) share = p.done / Math.max(1, p.total);
  $("#bake-bar").style.width = `${Math.round(share * 100)}%`;
  $("#bake-eta").textContent = p?.phase === "train" && p.etaSeconds ? `loss ${num(p.loss, 3)} · ~${Math.ceil(p.etaSeconds)}s left · ${num(p.tokensPerSecond, 0)} tok/s` : "";
  const { steps, val } = state.live;
  const box = $("#bake-live-chart");
  if (!steps.length && !val.length) return box.replaceChildren();
  box.replaceChildren(
    lineChart({
      title: "live training curve",
      xLabel: "step",
      yLabel: "KL / token",
      width: Math.max(480, box.clientWidth || 960),
      height: 200,
      series: [
        { name: "train KL", cls: "train", points: steps.map((s) => [s.step, s.klPerToken]) },
        { name: "validation KL", cls: "val", points: val },
      ],
    }),
  );
}

function onBakeEvent(ev) {
  const data = JSON.parse(ev.data);
  if (ev.event === "state") {
    if (data.baking) renderLive(data.progress);
    else $("#bake-live").classList.add("hidden");
  } else if (ev.event === "start") {
    state.live = { steps: [], val: [] };
    renderLive(null);
    refreshAgents();
  } else if (ev.event === "progress") {
    const p = data.progress;
    if (p.phase === "train") state.live.steps.push(p);
    if (p.phase === "validate") state.live.val.push([state.live.steps.at(-1)?.step ?? 0, p.valKlPerToken]);
    renderLive(p);
  } else if (ev.event === "outcome") {
    $("#bake-live").classList.add("hidden");
    const o = data.outcome;
    toast(o.status === "promoted" ? `Bake promoted: ${o.version} is live.` : `Bake ${o.status}: ${o.reasons.join("; ")}`, o.status === "failed" || o.status === "rejected");
    if (data.bakeId) state.selectedBake = data.bakeId;
    refreshAgents().then(refreshTab);
  }
}

async function watchBakes() {
  state.eventsAbort?.abort();
  const abort = new AbortController();
  state.eventsAbort = abort;
  const agent = state.agent;
  while (!abort.signal.aborted) {
    try {
      for await (const ev of stream(`/admin/agents/${enc(agent)}/bakes/events?follow=true`, { signal: abort.signal })) onBakeEvent(ev);
    } catch {
      /* reconnect below */
    }
    if (!abort.signal.aborted) await new Promise((r) => setTimeout(r, 2000));
  }
}

// --- versions ---

async function rollback(id) {
  const r = await attempt(() => api(agentPath(`/versions/${enc(id)}/rollback`), { method: "POST", body: {} }));
  if (!r) return;
  toast(`Rolled back: ${r.live} is live (was ${r.previous}).`);
  await refreshAgents();
  refreshVersions();
}

async function refreshVersions({ more = false } = {}) {
  if (more) state.versionLimit += 100;
  const data = await attempt(() => api(agentPath(`/versions?limit=${state.versionLimit}`)));
  if (!data) return;
  const live = data.live;
  const rows = data.versions.map((v) => {
    const canRoll = v.id !== live && !v.cannotGoLive; // the server says why not (rejected, pruned, holds retracted items)
    return h(
      "tr",
      { "data-id": v.id, class: v.id === live ? "live-row" : "" },
      h("td", {}, v.id),
      h("td", {}, badge(v.status)),
      h("td", {}, v.parent ?? "base"),
      agoCell(v.createdAt),
      h("td", {}, v.itemCount ?? v.items.length),
      h("td", { class: "score" }, num(v.scores.absorption)),
      h("td", { class: "score" }, num(v.scores.retention)),
      h("td", { class: "score" }, num(v.scores.persona)),
      h("td", v.cannotGoLive && v.id !== live ? { class: "muted", title: v.cannotGoLive } : {}, canRoll ? h("button", { class: "small ghost", type: "button", "data-rollback": v.id, "data-needs-idle": "", onclick: () => rollback(v.id) }, "Roll back to this") : v.id === live ? "live" : "cannot go live"),
    );
  });
  // The older versions not loaded yet sit between the newest and the base model, which is always there.
  const hidden = data.total - data.versions.length;
  const liveHidden = live !== "base" && !data.versions.some((v) => v.id === live);
  if (hidden > 0) {
    rows.push(h("tr", { class: "more-row" }, h("td", { colspan: 9, class: "muted" }, `${hidden} older version${hidden === 1 ? "" : "s"} not shown${liveHidden ? ` (the live version, ${live}, is among them)` : ""}`)));
  }
  rows.push(
    h(
      "tr",
      { "data-id": "base", class: live === "base" ? "live-row" : "" },
      h("td", {}, "base"),
      h("td", {}, badge(live === "base" ? "live" : "base")),
      h("td", {}, "–"),
      h("td", {}, "–"),
      h("td", {}, 0),
      h("td", {}, "–"),
      h("td", {}, "–"),
      h("td", {}, "–"),
      h("td", {}, live === "base" ? "live" : h("button", { class: "small ghost", type: "button", "data-rollback": "base", "data-needs-idle": "", onclick: () => rollback("base") }, "Roll back to base model")),
    ),
  );
  $("#versions-table tbody").replaceChildren(...rows);
  const moreButton = $("#versions-more");
  moreButton.hidden = hidden <= 0;
  moreButton.textContent = `Show ${Math.min(100, hidden)} more (${hidden} not shown)`;
  syncIdleButtons();
  // the diff compares what is shown (and the live version, wherever it is)
  const options = ["base", ...data.versions.map((v) => v.id).reverse()];
  if (liveHidden) options.splice(1, 0, live);
  for (const [sel, fallback] of [
    ["#diff-from", data.versions.find((v) => v.id === live)?.parent ?? "base"],
    ["#diff-to", live],
  ]) {
    const el = $(sel);
    const keep = el.dataset.picked && options.includes(el.value) ? el.value : fallback;
    el.replaceChildren(...options.map((o) => h("option", { value: o }, o)));
    el.value = options.includes(keep) ? keep : "base";
  }
}

$("#versions-more").addEventListener("click", () => refreshVersions({ more: true }));

for (const sel of ["#diff-from", "#diff-to"]) $(sel).addEventListener("change", (e) => (e.target.dataset.picked = "1"));
$("#diff-run").addEventListener("click", async () => {
  const d = await attempt(() => api(agentPath(`/versions/diff?from=${enc($("#diff-from").value)}&to=${enc($("#diff-to").value)}`)));
  if (!d) return;
  const list = (items) => (items.length ? h("ul", {}, items.map((i) => h("li", { title: i.id }, i.text))) : h("p", { class: "empty" }, "none"));
  $("#diff-out").replaceChildren(
    h("div", { class: "diff" }, h("div", { class: "gained" }, h("h4", {}, `Gained (${d.gained.length})`), list(d.gained)), h("div", { class: "lost" }, h("h4", {}, `Lost (${d.lost.length})`), list(d.lost))),
  );
});

// --- feeds ---

async function refreshFeeds() {
  const data = await attempt(() => api(agentPath("/feeds")));
  if (!data) return;
  const rows = data.feeds.map((f) =>
    h(
      "tr",
      { "data-id": f.id },
      h("td", {}, f.id),
      h("td", { class: "text" }, f.url),
      h("td", {}, h("code", {}, f.schedule)),
      agoCell(f.lastPolledAt),
      agoCell(f.lastOkAt),
      h("td", {}, f.lastError ? h("span", { class: "status error", title: f.lastError }, `${f.consecutiveErrors}× ${f.lastError.slice(0, 80)}`) : h("span", { class: "status ok" }, "ok")),
      h("td", {}, f.itemsAdded),
      h("td", {}, h("button", { class: "small ghost", type: "button", onclick: () => poll(f.id) }, "Poll now")),
    ),
  );
  $("#feeds-table tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "This agent has no feeds."))]));
}

async function poll(id) {
  const r = await attempt(() => api(agentPath(`/feeds/${enc(id)}/poll`), { method: "POST", body: {} }));
  if (!r) return;
  toast(r.error ? `Feed ${id}: ${r.error}` : `Feed ${id}: ${r.added} new item${r.added === 1 ? "" : "s"}.`, !!r.error);
  refreshFeeds();
  refreshAgents();
}

// --- start ---

refreshAgents();
setInterval(() => {
  refreshAgents();
  tickTimes();
}, 5000);
