// ragqa web UI: a thin client of the public REST API (/v1/...). No framework, no build step.
// The API key lives in localStorage and goes out as `Authorization: Bearer <key>`.
"use strict";

(() => {
  const STORE = { key: "ragqa.key", collection: "ragqa.collection", settings: "ragqa.settings" };
  const POLL_MS = 500;
  const $ = (sel, root = document) => root.querySelector(sel);

  // -- small helpers -----------------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("aria-") || k === "role" || k === "title") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const STATUS_TEXT = {
    0: "Cannot reach the server",
    400: "Bad request",
    401: "Not authorised — the API key is missing, wrong or revoked",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "File type not accepted",
    422: "Invalid request",
    500: "Server error",
  };

  /** A readable sentence for an API error: what kind it is, then the server's own message. */
  function describeError(status, body) {
    const head = STATUS_TEXT[status] || `Request failed (HTTP ${status})`;
    const msg = body && body.error && body.error.message ? body.error.message : "";
    return status ? `${head} (${status})${msg ? ": " + msg : "."}` : `${head}${msg ? ": " + msg : "."}`;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(describeError(status, body));
      this.status = status;
      this.code = body && body.error ? body.error.code : undefined;
    }
  }

  function apiKey() {
    return localStorage.getItem(STORE.key) || "";
  }

  function headers(extra = {}) {
    const h = { ...extra };
    const key = apiKey();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  /** fetch a /v1 path (relative, so the page also works behind a path prefix); JSON in and out. */
  async function request(path, { method = "GET", json, body, raw = false } = {}) {
    const init = { method, headers: headers() };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body;
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (exc) {
      throw new ApiError(0, { error: { message: String(exc.message || exc) } });
    }
    if (!res.ok) {
      let payload = null;
      try { payload = await res.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, payload);
    }
    if (raw) return res;
    if (res.status === 204) return null;
    return res.json();
  }

  // -- error banner and status ---------------------------------------------------------------
  function showError(err) {
    const text = err instanceof ApiError ? err.message : String(err && err.message ? err.message : err);
    $("#error-text").textContent = text;
    $("#error").hidden = false;
    if (err && err.status === 401) setConnection(false, "Not connected: the API key was refused.");
  }

  function clearError() {
    $("#error").hidden = true;
    $("#error-text").textContent = "";
  }

  /** Run an async UI action; any error goes to the banner instead of the console. */
  async function guarded(fn) {
    try {
      return await fn();
    } catch (err) {
      showError(err);
      return undefined;
    }
  }

  function setConnection(ok, text) {
    const c = $("#connection");
    c.textContent = text;
    c.dataset.state = ok ? "ok" : "off";
  }

  // -- collections ---------------------------------------------------------------------------
  const state = { collections: [], collection: localStorage.getItem(STORE.collection) || "", polls: new Map(), asking: false, conversationId: null };

  async function loadCollections() {
    const res = await request("v1/collections");
    state.collections = res.data;
    setConnection(true, `Connected · ${res.count} collection${res.count === 1 ? "" : "s"}`);
    const select = $("#collection-select");
    select.replaceChildren();
    if (!res.data.length) select.append(el("option", { value: "", textContent: "— create a collection —" }));
    for (const c of res.data) select.append(el("option", { value: c.name, textContent: c.name }));
    if (!res.data.some((c) => c.name === state.collection)) state.collection = res.data.length ? res.data[0].name : "";
    select.value = state.collection;
    localStorage.setItem(STORE.collection, state.collection);
    renderCollectionInfo();
    await loadDocuments();
  }

  function renderCollectionInfo() {
    const c = state.collections.find((x) => x.name === state.collection);
    $("#collection-info").textContent = c
      ? `${c.documents} documents · ${c.chunks} chunks · ${c.index_built} index · ${c.embedder}`
      : "No collection selected.";
    $("#collection-delete").disabled = !c;
  }

  async function createCollection(ev) {
    ev.preventDefault();
    const input = $("#new-collection");
    const name = input.value.trim();
    if (!name) return;
    await guarded(async () => {
      await request("v1/collections", { method: "POST", json: { name } });
      input.value = "";
      state.collection = name;
      localStorage.setItem(STORE.collection, name);
      clearError();
      await loadCollections();
    });
  }

  async function deleteCollection() {
    const name = state.collection;
    if (!name || !window.confirm(`Delete the collection "${name}" and all its documents?`)) return;
    await guarded(async () => {
      await request(`v1/collections/${encodeURIComponent(name)}`, { method: "DELETE" });
      state.collection = "";
      await loadCollections();
    });
  }

  async function selectCollection() {
    if (state.collection !== $("#collection-select").value) newConversation();
    state.collection = $("#collection-select").value;
    localStorage.setItem(STORE.collection, state.collection);
    renderCollectionInfo();
    await guarded(loadDocuments);
  }

  // -- documents -----------------------------------------------------------------------------
  async function loadDocuments() {
    const list = $("#document-list");
    if (!state.collection) {
      list.replaceChildren();
      $("#document-count").textContent = "";
      $("#documents-empty").hidden = false;
      return;
    }
    const res = await request(`v1/collections/${encodeURIComponent(state.collection)}/documents?limit=1000`);
    $("#document-count").textContent = `(${res.count})`;
    $("#documents-empty").hidden = res.data.length > 0;
    list.replaceChildren(...res.data.map(documentItem));
  }

  function documentItem(d) {
    const label = d.title && d.title !== d.filename ? `${d.title} — ${d.filename}` : d.filename;
    const del = el("button", {
      type: "button", class: "danger small", textContent: "Delete", "aria-label": `Delete document ${label}`,
    });
    del.addEventListener("click", () => deleteDocument(d, label));
    return el("li", { class: "document", dataset: { docId: d.doc_id, filename: d.filename } },
      el("span", { class: "doc-name", textContent: label, title: d.source }),
      el("span", { class: "hint", textContent: `${d.chunks} chunk${d.chunks === 1 ? "" : "s"}` }),
      del);
  }

  async function deleteDocument(d, label) {
    if (!window.confirm(`Delete "${label}" from ${state.collection}?`)) return;
    await guarded(async () => {
      await request(`v1/collections/${encodeURIComponent(state.collection)}/documents/${encodeURIComponent(d.doc_id)}`,
        { method: "DELETE" });
      await loadCollections();
    });
  }

  // -- uploads and jobs ----------------------------------------------------------------------
  async function upload(files) {
    files = Array.from(files || []);
    if (!files.length) return;
    if (!state.collection) {
      showError("Pick or create a collection first, then upload.");
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const collection = state.collection;
    await guarded(async () => {
      const job = await request(`v1/collections/${encodeURIComponent(collection)}/documents`, { method: "POST", body: form });
      const item = jobItem(job.job_id, collection, files.map((f) => f.name));
      $("#jobs").prepend(item);
      pollJob(job.job_id, item);
    });
    $("#file-input").value = "";
  }

  function jobItem(jobId, collection, names) {
    const files = el("ul", { class: "job-files" },
      ...names.map((n) => fileRow(n, "queued", "")));
    return el("li", { class: "job", dataset: { jobId, status: "queued" } },
      el("p", { class: "job-head" },
        el("span", { class: "job-title", textContent: `Upload to ${collection}` }),
        el("span", { class: "job-status badge", textContent: "queued" })),
      files);
  }

  function fileRow(name, status, detail) {
    return el("li", { class: "job-file", dataset: { filename: name, status } },
      el("span", { class: "file-name", textContent: name }),
      el("span", { class: `badge status-${status}`, textContent: status }),
      el("span", { class: "file-detail", textContent: detail }));
  }

  /** What the UI calls a file's state: queued, ingesting, done or failed (with the reason). */
  function fileState(job, f, firstPending) {
    if (f.status === "failed") return ["failed", f.error || "failed"];
    if (f.status === "pending") {
      if (job.status === "failed") return ["failed", job.error || "the job failed"];
      if (job.status === "running" && f === firstPending) return ["ingesting", ""];
      return ["queued", ""];
    }
    const what = f.status === "unchanged" ? "unchanged" : `${f.status}, ${f.chunks} chunk${f.chunks === 1 ? "" : "s"}`;
    return ["done", what];
  }

  function renderJob(job, item) {
    const firstPending = job.files.find((f) => f.status === "pending");
    const label = job.status === "running" ? "ingesting" : job.status;
    item.dataset.status = job.status;
    const badge = $(".job-status", item);
    badge.textContent = job.status === "running"
      ? `ingesting ${job.progress.processed}/${job.progress.total}` : label;
    badge.className = `job-status badge status-${label}`;
    $(".job-files", item).replaceChildren(...job.files.map((f) => {
      const [status, detail] = fileState(job, f, firstPending);
      return fileRow(f.original || f.filename, status, detail);
    }));
  }

  function pollJob(jobId, item) {
    const tick = async () => {
      let job;
      try {
        job = await request(`v1/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        showError(err);
        state.polls.delete(jobId);
        return;
      }
      renderJob(job, item);
      if (job.status === "done" || job.status === "failed") {
        state.polls.delete(jobId);
        if (job.collection === state.collection) await guarded(loadCollections);
        return;
      }
      state.polls.set(jobId, setTimeout(tick, POLL_MS));
    };
    state.polls.set(jobId, setTimeout(tick, 0));
  }

  function setupDropzone() {
    const zone = $("#dropzone");
    const input = $("#file-input");
    input.addEventListener("change", () => upload(input.files));
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (ev) => { ev.preventDefault(); zone.classList.add("dragging"); });
    }
    for (const type of ["dragleave", "dragend"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("dragging");
      upload(ev.dataTransfer ? ev.dataTransfer.files : []);
    });
    // A file dropped outside the zone must not navigate away from the page.
    window.addEventListener("dragover", (ev) => ev.preventDefault());
    window.addEventListener("drop", (ev) => ev.preventDefault());
  }

  // -- adapters and settings -----------------------------------------------------------------
  async function loadAdapters() {
    const select = $("#adapter");
    const wanted = (readSettings().adapter || "");
    let res;
    try {
      res = await request("v1/adapters");
    } catch (err) {
      if (err.status !== 404) throw err;
      res = { data: [] }; // an older server without the listing
    }
    // "" sends no adapter: the server's default (promoted, else shipped); "none" asks for the bare model
    select.replaceChildren(el("option", { value: "", textContent: "default" }),
      el("option", { value: "none", textContent: "none (bare model)" }));
    for (const a of res.data) {
      const m = a.metadata || {};
      if (m.kind === "reward") continue; // a reward model scores answers; it cannot write them
      const extra = [m.kind || m.method, m.created_at ? new Date(m.created_at * 1000).toLocaleDateString() : null]
        .filter(Boolean).join(", ");
      select.append(el("option", { value: a.name, textContent: extra ? `${a.name} (${extra})` : a.name }));
    }
    select.value = wanted === "none" || res.data.some((a) => a.name === wanted) ? wanted : "";
  }

  function readSettings() {
    try { return JSON.parse(localStorage.getItem(STORE.settings) || "{}"); } catch (_) { return {}; }
  }

  function saveSettings() {
    localStorage.setItem(STORE.settings, JSON.stringify({
      mode: $("#mode").value, k: $("#k").value, adapter: $("#adapter").value, style: $("#style").value }));
  }

  function restoreSettings() {
    const s = readSettings();
    if (s.mode !== undefined) $("#mode").value = s.mode;
    if (s.k !== undefined) $("#k").value = s.k;
    if (s.style) $("#style").value = s.style;
  }

  // -- asking: streamed answer, citations ------------------------------------------------------
  function escapeRegExp(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  /** Nodes for `text` with every case-insensitive occurrence of `needle` wrapped in <mark>. */
  function highlight(text, needle) {
    const n = (needle || "").trim().replace(/[.!?,;:]+$/, "");
    if (n.length < 2) return [document.createTextNode(text)];
    const re = new RegExp(escapeRegExp(n).replace(/\s+/g, "\\s+"), "gi");
    const out = [];
    let last = 0;
    for (const m of text.matchAll(re)) {
      if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
      out.push(el("mark", { textContent: m[0] }));
      last = m.index + m[0].length;
    }
    if (last < text.length) out.push(document.createTextNode(text.slice(last)));
    return out;
  }

  /** Nodes for `text` with chars [span[0], span[1]) wrapped in <mark> (no span: the text alone). */
  function markSpan(text, span) {
    if (!span) return [document.createTextNode(text)];
    return [text.slice(0, span[0]), el("mark", { textContent: text.slice(span[0], span[1]) }), text.slice(span[1])]
      .map((x) => (typeof x === "string" ? document.createTextNode(x) : x));
  }

  /** The answer text as nodes, each marker [n] a link; the i-th run of markers belongs to the i-th
   * sentence that cites something, so its span is that sentence's spans[j] for citation n. */
  function answerNodes(a, onMarker) {
    const cited = (a.sentences || []).filter((s) => s.citations.length);
    const out = [];
    let last = 0, group = 0;
    for (const m of a.answer.matchAll(/(?:\[\d+\])+/g)) {
      const sentence = cited[group++];
      if (!sentence) break;
      if (m.index > last) {
        const text = document.createTextNode(a.answer.slice(last, m.index));
        // a sentence copied as written from its chunk (full answers shorter than qa.full_quote_min_words)
        out.push(sentence.quoted ? el("span", { class: "quoted", title: "Quoted from the cited passage" }, text)
          : text);
      }
      for (const [, n] of m[0].matchAll(/\[(\d+)\]/g)) {
        const index = Number(n);
        const span = sentence.spans[sentence.citations.indexOf(index)] || null;
        const link = el("a", { href: "#", class: "marker", textContent: `[${index}]`,
          title: "Show the supporting passage" });
        link.addEventListener("click", (ev) => { ev.preventDefault(); onMarker(index, span, sentence.text); });
        out.push(link);
      }
      last = m.index + m[0].length;
    }
    if (last < a.answer.length) out.push(document.createTextNode(a.answer.slice(last)));
    return out;
  }

  /** Highlight `span` of citation `index` in the card's citation list and bring it into view. */
  function showSupport(card, citations, index, span) {
    const c = citations.find((x) => x.index === index);
    const item = $(`.citation[data-index="${index}"]`, card);
    if (!c || !item) return;
    for (const other of card.querySelectorAll(".citation.active")) other.classList.remove("active");
    $(".citation-text", item).replaceChildren(...markSpan(c.text, span));
    item.classList.add("active");
    item.scrollIntoView({ block: "nearest", behavior: "smooth" });
    item.focus({ preventScroll: true });
  }

  function citationItem(c, answer, abstained) {
    const where = [];
    if (c.metadata && c.metadata.page !== undefined) where.push(`page ${c.metadata.page}`);
    if (c.metadata && Array.isArray(c.metadata.headings) && c.metadata.headings.length) where.push(c.metadata.headings.join(" › "));
    const source = c.source.split(/[\\/]/).pop();
    const text = el("blockquote", { class: "citation-text" }, ...highlight(c.text, abstained ? "" : answer));
    return el("li", { class: "citation", tabIndex: -1, dataset: { docId: c.doc_id, chunkId: c.chunk_id, index: String(c.index) } },
      el("p", { class: "citation-head" },
        el("span", { class: "citation-index", textContent: `[${c.index}]` }), " ",
        el("strong", { class: "citation-title", textContent: c.title || source })),
      el("p", { class: "citation-meta hint" },
        el("span", { class: "citation-source", textContent: source, title: c.source }),
        where.length ? ` · ${where.join(" · ")}` : "",
        el("span", { class: "citation-scores",
          textContent: ` · score ${c.score.toFixed(3)} · p(z|x) ${c.posterior.toFixed(3)} · share ${(100 * c.contribution).toFixed(0)}%` })),
      text);
  }

  /** Parse Server-Sent Events from a fetch body: calls onEvent(name, data) per event. */
  async function readEvents(res, onEvent) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    const flush = (block) => {
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(buf.slice(cut).match(/^\r?\n\r?\n/)[0].length + cut);
        flush(block);
      }
    }
    if (buf.trim()) flush(buf);
  }

  async function ask(ev) {
    if (ev) ev.preventDefault();
    const q = $("#question");
    const question = q.value.trim();
    if (!question) { q.focus(); return; }
    if (!state.collection) { showError("Pick or create a collection first, then ask."); return; }
    if (state.asking) return; // one question at a time: the generator answers them in turn anyway
    const body = { question, collection: state.collection, stream: true };
    if ($("#mode").value) body.mode = $("#mode").value;
    if ($("#k").value) body.k = Number($("#k").value);
    if ($("#adapter").value) body.adapter = $("#adapter").value;
    body.answer_style = $("#style").value;
    if (state.conversationId) body.conversation_id = state.conversationId; // a follow-up in this thread

    const card = $("#answer-template").content.firstElementChild.cloneNode(true);
    $(".question-text", card).textContent = question;
    const answerEl = $(".answer-text", card);
    answerEl.classList.add("streaming");
    card.dataset.tokens = "0";
    card.dataset.state = "streaming";
    $("#answers").append(card); // a thread: oldest first
    card.scrollIntoView({ block: "nearest" });
    const button = $("#ask-button");
    button.disabled = true;
    state.asking = true;
    clearError();
    try {
      const res = await request("v1/ask", { method: "POST", json: body, raw: true });
      let final = null;
      await readEvents(res, (name, data) => {
        if (name === "token") {
          answerEl.textContent += data.text;
          card.dataset.tokens = String(Number(card.dataset.tokens) + 1);
        } else if (name === "answer") {
          final = data;
        } else if (name === "error") {
          const e = data.error || {};
          throw new Error(`The answer failed${e.code ? " (" + e.code + ")" : ""}: ${e.message || "unknown error"}`);
        }
      });
      if (!final) throw new Error("The answer stream ended early; try again.");
      finishAnswer(card, final);
      if (final.conversation_id) {
        state.conversationId = final.conversation_id;
        const n = $("#answers").querySelectorAll(".answer-card[data-state=done]").length;
        $("#thread-status").textContent = `Conversation · ${n} question${n === 1 ? "" : "s"}: ask a follow-up, or start a new conversation.`;
      }
      q.value = "";
    } catch (err) {
      card.dataset.state = "error";
      answerEl.textContent = answerEl.textContent || "No answer.";
      showError(err);
    } finally {
      answerEl.classList.remove("streaming");
      card.setAttribute("aria-busy", "false");
      button.disabled = false;
      state.asking = false;
    }
  }

  function finishAnswer(card, a) {
    card.dataset.state = "done";
    card.dataset.answerId = a.answer_id;
    card.dataset.abstained = String(a.abstained);
    $(".answer-text", card).replaceChildren(...answerNodes(a, (index, span) => showSupport(card, a.citations, index, span)));
    if (a.standalone_question && a.standalone_question !== a.question) {
      $(".standalone-text", card).hidden = false;
      $(".standalone", card).textContent = a.standalone_question;
    }
    if (a.abstained) {
      $(".abstained", card).hidden = false;
      $(".abstain-reason", card).textContent = a.abstain_reason || "the evidence is weak";
    }
    const secs = a.timings && a.timings.server_s !== undefined ? ` · ${a.timings.server_s.toFixed(2)} s` : "";
    $(".answer-meta", card).textContent =
      `${a.mode} · k ${a.k} · ${a.style || "short"} · ${a.model}${a.adapter ? " + " + a.adapter + (a.adapter_source && a.adapter_source !== "request" ? ` (${a.adapter_source} default)` : "") : ""} · ${a.generated_tokens} tokens${secs}`;
    const full = a.style === "full"; // full answers are not copied spans: their markers show the support
    $(".citations", card).replaceChildren(...a.citations.map((c) => citationItem(c, full ? "" : a.answer, a.abstained)));
    if (!a.citations.length) $(".citations", card).append(el("li", { class: "hint", textContent: "No citations." }));
    setupFeedback(card, a.answer_id);
  }

  // -- conversation thread -------------------------------------------------------------------
  function newConversation() {
    state.conversationId = null;
    $("#answers").replaceChildren();
    $("#thread-status").textContent = "New conversation: follow-up questions may refer to earlier answers.";
  }

  // -- feedback ------------------------------------------------------------------------------
  function setupFeedback(card, answerId) {
    const form = $(".feedback", card);
    form.hidden = false;
    let rating = "";
    for (const b of form.querySelectorAll(".thumb")) {
      b.addEventListener("click", () => {
        rating = b.dataset.rating;
        for (const o of form.querySelectorAll(".thumb")) o.setAttribute("aria-pressed", String(o === b));
      });
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const status = $(".feedback-status", form);
      if (!rating) { status.textContent = "Choose Good or Bad first."; return; }
      const correction = $(".correction", form).value.trim();
      const payload = { rating };
      if (correction) payload.correction = correction;
      await guarded(async () => {
        const fb = await request(`v1/answers/${encodeURIComponent(answerId)}/feedback`, { method: "POST", json: payload });
        status.textContent = `Thanks — feedback saved (#${fb.feedback_id}).`;
        form.dataset.sent = "true";
        $("fieldset", form).disabled = true;
      });
    });
  }

  // -- key -----------------------------------------------------------------------------------
  async function connect() {
    clearError();
    setConnection(false, "Connecting…");
    try {
      await loadCollections();
      await loadAdapters();
    } catch (err) {
      showError(err);
      if (err.status !== 401) setConnection(false, "Not connected.");
    }
  }

  function setupKey() {
    const input = $("#api-key");
    input.value = apiKey();
    $("#key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      localStorage.setItem(STORE.key, input.value.trim());
      connect();
    });
    $("#key-forget").addEventListener("click", () => {
      localStorage.removeItem(STORE.key);
      input.value = "";
      setConnection(false, "Not connected: no API key.");
      input.focus();
    });
  }

  // -- start ---------------------------------------------------------------------------------
  async function start() {
    setupKey();
    setupDropzone();
    restoreSettings();
    $("#error-close").addEventListener("click", clearError);
    $("#collection-form").addEventListener("submit", createCollection);
    $("#collection-select").addEventListener("change", selectCollection);
    $("#collection-refresh").addEventListener("click", () => guarded(loadCollections));
    $("#collection-delete").addEventListener("click", deleteCollection);
    $("#ask-form").addEventListener("submit", ask);
    $("#new-conversation").addEventListener("click", () => { if (!state.asking) { newConversation(); $("#question").focus(); } });
    $("#question").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) ask(ev);
    });
    for (const id of ["#mode", "#k", "#adapter", "#style"]) $(id).addEventListener("change", saveSettings);
    renderCollectionInfo();
    let auth = true;
    try {
      const health = await (await fetch("healthz")).json();
      auth = health.auth !== false;
    } catch (_) { /* the API calls will report it */ }
    if (!auth) $("#key-help").textContent = "This server runs without authentication (--no-auth); no key is needed.";
    if (apiKey() || !auth) await connect();
    else {
      setConnection(false, "Not connected: enter an API key.");
      $("#api-key").focus();
    }
  }

  // For tests and the curious: the pure helpers.
  window.ragqa = { describeError, highlight, answerNodes, markSpan };
  document.addEventListener("DOMContentLoaded", start);
})();
