// The page duet serve shows at /: try the model, read its card, watch drift.
// Every text that comes from the server is inserted with textContent (never
// innerHTML), and the API key lives in the variable below only: never in
// localStorage, sessionStorage, cookies or the URL.
"use strict";

(function () {
  const DRIFT_REFRESH_MS = 4000;
  let apiKey = "";          // the only place the key is kept
  let driftWindow = null;   // images per drift window (from /v1/card)
  let driftTimer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // ------------------------------------------------------------------ HTTP

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (apiKey) opts.headers["Authorization"] = "Bearer " + apiKey;
    let response;
    try {
      response = await fetch(path, opts);
    } catch (err) {
      throw new ApiFailure(0, "network", "the server cannot be reached (" + err.message + ")");
    }
    const type = response.headers.get("content-type") || "";
    let body = null;
    if (type.includes("application/json")) {
      try { body = await response.json(); } catch (err) { body = null; }
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string"
        ? body.error : "HTTP " + response.status + " " + response.statusText;
      const code = body && typeof body.code === "string" ? body.code : "http_" + response.status;
      if (response.status === 401) askForKey(code, message);
      throw new ApiFailure(response.status, code, message);
    }
    return { body: body, headers: response.headers };
  }

  // ------------------------------------------------------------------ API key

  function askForKey(code, message) {
    $("auth").hidden = false;
    $("auth-message").textContent = apiKey
      ? "The server refused this API key (" + message + "). Type the right one."
      : "This server needs an API key: type it below (" + message + ").";
  }

  function setupKeyForm() {
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("api-key");
      apiKey = input.value.trim();
      input.value = "";  // the key stays in apiKey only, not in the DOM
      $("auth-message").textContent = apiKey
        ? "Key set for this page (in memory)." : "Key cleared.";
      loadCard();
      refreshDrift();
    });
  }

  // ------------------------------------------------------------------ predict

  function showMessage(text) {
    const box = $("predict-message");
    box.textContent = text;
    box.hidden = !text;
  }

  function topK() {
    const n = parseInt($("top-k").value, 10);
    return Number.isFinite(n) && n >= 1 ? Math.min(n, 100) : 5;
  }

  async function predict(file) {
    if (!file) return;
    showMessage("");
    if (file.type && !file.type.startsWith("image/")) {
      showMessage("'" + file.name + "' is not an image (" + file.type + ").");
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const preview = $("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    $("result").classList.add("busy");
    $("top1-label").textContent = "";  // set again by the answer
    const started = performance.now();
    try {
      const answer = await api("v1/predict?top_k=" + topK(), { method: "POST", body: form });
      const elapsed = performance.now() - started;
      showPrediction(answer.body, file, elapsed);
    } catch (err) {
      $("result").hidden = true;
      showMessage(err.status === 401
        ? "Not authorised (401): " + err.message + ". Type the server's API key above, then try again."
        : "The server refused the image (" + (err.status || "no answer") + " " + err.code + "): " + err.message);
    } finally {
      $("result").classList.remove("busy");
    }
  }

  function pct(p) {
    return (100 * p).toFixed(1) + " %";
  }

  function showPrediction(body, file, elapsedMs) {
    const prediction = body.predictions[0];
    $("top1-label").textContent = prediction.label;
    $("top1-prob").textContent = pct(prediction.probability);
    const bars = $("bars");
    bars.replaceChildren();
    for (const item of prediction.top) {
      const li = el("li", null, "bar-row");
      li.append(el("span", item.label, "bar-label"));
      const track = el("span", null, "bar-track");
      const fill = el("span", null, "bar-fill");
      fill.style.width = Math.max(0, Math.min(100, 100 * item.probability)).toFixed(2) + "%";
      track.append(fill);
      li.append(track, el("span", pct(item.probability), "bar-value"));
      bars.append(li);
    }
    $("latency").textContent = "Round trip " + elapsedMs.toFixed(0) + " ms (measured in this page, upload included) · "
      + file.name + " · " + (file.size / 1024).toFixed(1) + " KiB · model " + body.model + " v" + body.version;
    $("result").hidden = false;
  }

  function setupDrop() {
    const drop = $("drop");
    const input = $("file");
    input.addEventListener("change", () => {
      if (input.files.length) predict(input.files[0]);
      input.value = "";  // the same file picked again is a new request
    });
    ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) predict(files[0]);
    });
    // a file dropped beside the zone must not navigate away from the page
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  // ------------------------------------------------------------------ model card

  function fact(list, name, value) {
    list.append(el("dt", name), el("dd", value));
  }

  async function loadCard() {
    let info;
    try {
      info = (await api("v1/card")).body;
    } catch (err) {
      if (err.status === 401) $("model-title").textContent = "Model (needs the API key)";
      $("card-text").replaceChildren(el("p", "The model card cannot be read: " + err.message, "message"));
      return;
    }
    document.title = info.model + " · duet serve";
    $("model-title").textContent = info.model;
    $("model-version").textContent = "v" + info.version;
    $("top-k").max = String(info.num_classes);
    if (!$("top-k").dataset.touched) $("top-k").value = String(Math.min(info.top_k, info.num_classes));
    driftWindow = info.drift.window;
    const facts = $("facts");
    facts.replaceChildren();
    fact(facts, "model", info.model + " (version " + info.version + ")");
    fact(facts, "architecture", info.architecture);
    fact(facts, "input", info.image_size + " × " + info.image_size + " px RGB (the server resizes)");
    fact(facts, "labels", info.num_classes + ": " + info.labels.join(", "));
    fact(facts, "runtime", info.runtime + " on " + info.device);
    fact(facts, "drift", info.drift.on
      ? "on: window " + info.drift.window + " images, verdict every " + info.drift.interval + " s"
      : "off");
    $("card-text").replaceChildren(info.card === null
      ? el("p", "The model folder has no MODEL_CARD.md (or it changed after export).", "muted")
      : renderMarkdown(info.card));
  }

  // A small Markdown renderer for the card: headings, tables, lists, paragraphs,
  // `code`, **bold** and *italic*. It builds DOM nodes with textContent only.
  function inline(parent, text) {
    const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*]+\*)/g;
    let last = 0;
    let match;
    while ((match = pattern.exec(text)) !== null) {
      if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
      const token = match[0];
      if (token.startsWith("`")) parent.append(el("code", token.slice(1, -1)));
      else if (token.startsWith("**")) parent.append(el("strong", token.slice(2, -2)));
      else parent.append(el("em", token.slice(1, -1)));
      last = match.index + token.length;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
    return parent;
  }

  function tableCells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function renderTable(lines) {
    const table = el("table", null, "md-table");
    const head = el("thead");
    const row = el("tr");
    tableCells(lines[0]).forEach((c) => row.append(inline(el("th"), c)));
    head.append(row);
    const body = el("tbody");
    lines.slice(2).forEach((line) => {
      const tr = el("tr");
      tableCells(line).forEach((c) => tr.append(inline(el("td"), c)));
      body.append(tr);
    });
    table.append(head, body);
    const wrap = el("div", null, "table-wrap");
    wrap.append(table);
    return wrap;
  }

  function renderMarkdown(text) {
    const root = el("div");
    const lines = text.replace(/\r\n/g, "\n").split("\n");
    let i = 0;
    const take = (test) => {
      const block = [];
      while (i < lines.length && test(lines[i])) block.push(lines[i++]);
      return block;
    };
    while (i < lines.length) {
      const line = lines[i];
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (!line.trim()) { i++; continue; }
      if (heading) {
        const level = Math.min(6, heading[1].length + 2);  // the card's # is below the page's h2
        root.append(inline(el("h" + level), heading[2]));
        i++;
      } else if (line.trim().startsWith("|")) {
        root.append(renderTable(take((l) => l.trim().startsWith("|"))));
      } else if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const list = el(ordered ? "ol" : "ul");
        take((l) => /^\s*([-*]|\d+\.)\s+/.test(l)).forEach((l) =>
          list.append(inline(el("li"), l.replace(/^\s*([-*]|\d+\.)\s+/, ""))));
        root.append(list);
      } else {
        const para = take((l) => l.trim() && !/^(#|\||\s*([-*]|\d+\.)\s)/.test(l));
        root.append(inline(el("p"), para.join(" ")));
      }
    }
    return root;
  }

  // ------------------------------------------------------------------ drift

  const VERDICTS = {
    drift: ["Drift detected", "bad"],
    no_drift: ["No drift", "good"],
    insufficient: ["Warming up", "wait"],
  };

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (Math.abs(value) > 0 && Math.abs(value) < 0.001) return value.toExponential(1);
    return Number(value).toFixed(digits);
  }

  function showDrift(result) {
    const [text, kind] = VERDICTS[result.status] || [result.status, "wait"];
    const verdict = $("drift-verdict");
    verdict.textContent = text;
    verdict.className = "verdict " + kind;
    $("drift-sentence").textContent = result.sentence;
    $("drift-fill-row").hidden = false;
    const size = driftWindow || result.n_current || 1;
    $("drift-fill").textContent = result.n_current + " / " + (driftWindow || "?") + " images";
    $("drift-fill-bar").style.width = Math.min(100, 100 * result.n_current / size).toFixed(1) + "%";
    const acc = result.accuracy_estimate;
    $("drift-accuracy").textContent = acc && acc.accuracy !== null && acc.accuracy !== undefined
      ? "Estimated accuracy (no labels): " + pct(acc.accuracy) + " [" + pct(acc.low) + " – " + pct(acc.high)
        + "], reference " + pct(acc.reference_accuracy)
      : "";
    const rows = $("drift-detectors").tBodies[0];
    rows.replaceChildren();
    for (const d of result.detectors) {
      const tr = el("tr");
      tr.append(el("td", d.detector));
      // an unbiased MMD² scatters around 0 when there is no difference: never show it below 0
      const negativeMmd = d.statistic_name === "MMD²" && d.statistic !== null && d.statistic < 0;
      tr.append(el("td", d.statistic_name + (negativeMmd ? " ≈ 0" : " " + fmt(d.statistic, 4))));
      tr.append(el("td", fmt(d.p_value, 3)));
      const state = d.skipped ? "skipped" : d.drift ? "drift" : "ok";
      const cell = el("td", state, "state " + state);
      cell.title = d.sentence;
      tr.append(cell);
      rows.append(tr);
    }
    $("drift-detectors").hidden = false;
    $("drift-updated").textContent = "Verdict computed " + new Date(result.computed_at).toLocaleTimeString()
      + "; this panel refreshes every " + DRIFT_REFRESH_MS / 1000 + " s.";
  }

  function showDriftProblem(err) {
    const verdict = $("drift-verdict");
    const off = err.code === "drift_off";
    verdict.textContent = off ? "Drift monitoring is off" : err.status === 401 ? "Needs the API key" : "Unavailable";
    verdict.className = "verdict " + (off ? "off" : "wait");
    $("drift-sentence").textContent = err.message;
    $("drift-fill-row").hidden = true;
    $("drift-accuracy").textContent = "";
    $("drift-detectors").hidden = true;
    $("drift-updated").textContent = "";
    return off;
  }

  async function refreshDrift() {
    clearTimeout(driftTimer);
    let again = true;
    try {
      showDrift((await api("v1/monitor")).body);
    } catch (err) {
      again = !showDriftProblem(err) && err.status !== 401;  // off stays off; 401 waits for a key
    }
    if (again) driftTimer = setTimeout(refreshDrift, DRIFT_REFRESH_MS);
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("top-k").addEventListener("input", () => { $("top-k").dataset.touched = "1"; });
    setupKeyForm();
    setupDrop();
    loadCard().then(refreshDrift);
  });
})();
