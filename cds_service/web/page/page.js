// The "try it" form: bundled scenarios or a pasted request -> a service -> cards and trace.
// Everything from the service is put on the page as text (textContent), never as HTML.
"use strict";

const EXPLAIN_KEY = "org.myeloma-cds.explain";
const $ = (id) => document.getElementById(id);
let services = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(diagnostics(body) || `HTTP ${response.status}`);
  return body;
}

function diagnostics(body) {
  return body && body.issue ? body.issue.map((i) => i.diagnostics).join("; ") : "";
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function fillServices(hook, preferred) {
  const select = $("service");
  select.replaceChildren();
  for (const s of services.filter((s) => !hook || s.hook === hook)) {
    select.append(el("option", { value: s.id }, `${s.id} (${s.hook})`));
  }
  if (preferred) select.value = preferred;
}

async function loadScenarios() {
  const list = await getJson("ui/scenarios");
  const groups = {};
  for (const s of list) {
    groups[s.file] = groups[s.file] || $("scenario").appendChild(el("optgroup", { label: s.file }));
    groups[s.file].append(el("option", { value: s.id }, s.name));
  }
}

async function chooseScenario() {
  const id = $("scenario").value;
  if (!id) return;
  setStatus("loading the scenario...");
  try {
    const chosen = await getJson(`ui/scenarios/${encodeURIComponent(id)}`);
    $("request").value = JSON.stringify(chosen.request, null, 2);
    fillServices(chosen.request.hook, chosen.service);
    setStatus(`expected cards: ${chosen.expect.join(", ") || "none"}`);
  } catch (error) {
    setStatus(`could not load the scenario: ${error.message}`, true);
  }
}

async function send(event) {
  event.preventDefault();
  let body;
  try {
    body = JSON.parse($("request").value);
  } catch (error) {
    setStatus(`the request is not valid JSON: ${error.message}`, true);
    return;
  }
  if (!$("service").value || (body.hook && !services.some((s) => s.id === $("service").value && s.hook === body.hook))) {
    fillServices(body.hook);
  }
  const service = $("service").value;
  if (!service) {
    setStatus(`no service answers the hook '${body.hook}'`, true);
    return;
  }
  setStatus("sending...");
  const response = await fetch(`cds-services/${encodeURIComponent(service)}?explain=1`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    setStatus(`HTTP ${response.status}: ${diagnostics(answer)}`, true);
    return;
  }
  setStatus(`${answer.cards.length} card(s) from ${service}`);
  showCards(answer.cards);
  showTrace((answer.extension || {})[EXPLAIN_KEY]);
  $("result").hidden = false;
}

// Card detail is CDS Hooks Markdown: paragraphs, "- " lists, **bold**, *italic*, `code` and
// [links](https://...). Built as DOM nodes from text (never innerHTML), so card text cannot
// inject markup; only http(s) links become anchors.
function markdown(text) {
  const blocks = [];
  let list = null;
  let para = [];
  const flush = () => {
    if (para.length) blocks.push(el("p", {}, ...inline(para.join(" "))));
    para = [];
  };
  for (const line of text.split(/\r?\n/)) {
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (item) {
      flush();
      if (!list) { list = el("ul", {}); blocks.push(list); }
      list.append(el("li", {}, ...inline(item[1])));
    } else if (!line.trim()) {
      flush();
      list = null;
    } else {
      list = null;
      para.push(line.trim());
    }
  }
  flush();
  return blocks;
}

function inline(text) {
  const out = [];
  const pattern = /\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)|\*\*([^*]+)\*\*|\*([^*]+)\*|`([^`]+)`/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1] !== undefined) out.push(el("a", { href: m[2], target: "_blank", rel: "noopener noreferrer" }, m[1]));
    else if (m[3] !== undefined) out.push(el("strong", {}, m[3]));
    else if (m[4] !== undefined) out.push(el("em", {}, m[4]));
    else out.push(el("code", {}, m[5]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

// The card's topic, and for a bundled card the members it lists ("SCR: SCR-1, SCR-3 · ").
function topicOf(card) {
  const topic = card.source.topic ? card.source.topic.code : "";
  const members = (card.extension || {})["myeloma-cds.recommendations"] || [];
  const listed = members.length && !(members.length === 1 && members[0] === topic) ? `: ${members.join(", ")}` : "";
  return topic ? `${topic}${listed} · ` : "";
}

function showCards(cards) {
  const box = $("cards");
  box.replaceChildren();
  if (!cards.length) box.append(el("p", {}, "No card: nothing to recommend for this patient and these orders."));
  for (const card of cards) {
    const node = el("article", { class: `card ${card.indicator}` },
      el("h4", {}, card.summary, " ", el("span", { class: "badge" }, card.indicator)),
      el("div", { class: "source" }, `${topicOf(card)}${card.source.label}`));
    if (card.detail) node.append(el("div", { class: "detail" }, ...markdown(card.detail)));
    if (card.suggestions) {
      node.append(el("ul", { class: "suggestions" }, ...card.suggestions.map((s) => el("li", {}, `Suggests: ${s.label}`))));
    }
    box.append(node);
  }
}

function showTrace(trace) {
  const box = $("trace");
  box.replaceChildren();
  if (!trace) {
    box.append(el("p", { class: "notice", id: "no-trace" },
      "No trace in the answer: explain is off on this service (MM_CDS_EXPLAIN_ENABLED=1), or this caller is not trusted with it (loopback or an authenticated JWT)."));
    return;
  }
  box.append(el("p", {}, `${trace.service} (${trace.hook}) · ${trace.planDefinition} · now ${trace.now}`));
  const actions = el("table", { id: "trace-actions" },
    el("thead", {}, el("tr", {}, el("th", {}, "card"), el("th", {}, "fired"), el("th", {}, "conditions (value: description)"))));
  const rows = el("tbody");
  // A bundle's members follow it, each fired or not (the card lists only those that fired).
  const listed = trace.actions.flatMap((a) => [a, ...(a.members || []).map((m) => ({ ...m, code: `member ${m.code}` }))]);
  for (const action of listed) {
    const conditions = el("ul");
    if (action.note) conditions.append(el("li", {}, action.note));
    for (const c of action.conditions) {
      const value = c.error ? "error" : JSON.stringify(c.value);
      const kind = c.error ? "error" : String(c.value);
      conditions.append(el("li", {}, el("span", { class: `value-${kind}` }, value), `: ${c.description || c.expression}`,
        c.error ? ` (${c.error})` : c.note ? ` (${c.note})` : ""));
    }
    rows.append(el("tr", {}, el("td", {}, action.code), el("td", { class: action.fired ? "fired" : "" }, action.fired ? "fired" : "no"),
      el("td", {}, conditions)));
  }
  actions.append(rows);
  box.append(el("h4", {}, "Cards, fired or not"), actions);
  const data = el("table", { id: "trace-data" },
    el("thead", {}, el("tr", {}, ...["data requirement", "source", "received", "kept", "note"].map((h) => el("th", {}, h)))));
  const dataRows = el("tbody");
  for (const [key, r] of Object.entries(trace.dataRequirements)) {
    dataRows.append(el("tr", {}, ...[key, r.source, r.received, r.count, r.note || ""].map((v) => el("td", {}, v))));
  }
  data.append(dataRows);
  box.append(el("h4", {}, "Data requirements"), data);
  box.append(el("h4", {}, "Notes"), el("ul", {}, ...(trace.notes.length ? trace.notes : ["(none)"]).map((n) => el("li", {}, n))));
  const unmatched = trace.unmatchedCodes.map((c) => `${c.system || "(no system)"}|${c.code} (${c.resourceType}.${c.element} in ${c.in.join(", ")})`);
  box.append(el("h4", {}, "Codes that matched no value set"), el("ul", {}, ...(unmatched.length ? unmatched : ["(none)"]).map((n) => el("li", {}, n))));
}

async function start() {
  $("try-form").addEventListener("submit", (event) => send(event).catch((error) => setStatus(error.message, true)));
  $("scenario").addEventListener("change", chooseScenario);
  try {
    services = (await getJson("cds-services")).services;
    fillServices();
    await loadScenarios();
    setStatus("ready");
  } catch (error) {
    setStatus(`could not reach the service: ${error.message}`, true);
  }
}

start();
