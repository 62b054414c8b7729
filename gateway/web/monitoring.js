// Feedback counts and the "to label" queue; drift, A/B, retraining and batch jobs. Routes that this
// gateway does not have (yet) show "not available" instead of an error.

import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";
import { ApiError, fetchableUrl, getJson, postForm } from "./api.js";

const $ = (id) => document.getElementById(id);

export function setupMonitoring(state) {
  const refreshFeedback = () => state.model && loadFeedback(state, state.model);
  const refreshMonitoring = () => state.model && loadMonitoring(state, state.model);
  state.onModelChange(() => {
    refreshFeedback();
    refreshMonitoring();
  });
  $("feedback-refresh").addEventListener("click", refreshFeedback);
  $("monitoring-refresh").addEventListener("click", refreshMonitoring);
  $("tab-feedback").addEventListener("shown", refreshFeedback);
  $("tab-monitoring").addEventListener("shown", refreshMonitoring);
  showGrafana();
  $("batch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runBatch(state, state.model);
  });
}

// The Grafana link, when the deployment set PRODSEG_GRAFANA_URL (GET /ui/config.json, no key needed).
async function showGrafana() {
  try {
    const config = await (await fetch("config.json")).json();
    if (!config.grafana_url) return;
    $("grafana-link").href = config.grafana_url;
    $("grafana").hidden = false;
  } catch {
    // an older gateway without the config: no link
  }
}

// GET a report; a 404/405 (route or report missing) is shown as `missing`; other errors go up.
async function optional(path, element, missing) {
  try {
    return await getJson(path);
  } catch (error) {
    if (error instanceof ApiError && [404, 405].includes(error.status)) {
      element.replaceChildren(text(error.code === "model_not_found" ? error.message : missing));
      element.dataset.state = "not-available";
      return null;
    }
    throw error;
  }
}

async function loadFeedback(state, model) {
  try {
    const counts = await getJson(`/v1/models/${model.name}/feedback`);
    const shown = ["total", "correct", "wrong", "corrections"].map((key) => [key, counts[key]]);
    for (const [version, byVersion] of Object.entries(counts.by_version || {})) {
      shown.push([`version ${version}`, Object.entries(byVersion).map(([k, v]) => `${k} ${v}`).join(", ")]);
    }
    $("feedback-counts").replaceChildren(table(["", "count"], shown));
    $("feedback-counts").dataset.total = String(counts.total);
    const queue = await optional(
      `/v1/models/${model.name}/feedback?state=to_label`,
      $("feedback-queue"),
      "The active-learning queue is not available on this gateway."
    );
    const items = queue && (queue.items || queue.queue);
    if (queue && Array.isArray(items)) {
      $("feedback-queue").replaceChildren(
        items.length
          ? table(Object.keys(items[0]), items.map((item) => Object.values(item).map(short)))
          : text("Nothing to label.")
      );
    } else if (queue) {
      $("feedback-queue").replaceChildren(text("The active-learning queue is not available on this gateway."));
    }
  } catch (error) {
    state.showError(error);
  }
}

async function loadMonitoring(state, model) {
  try {
    const drift = await optional(`/v1/models/${model.name}/drift`, $("drift"), "Drift monitoring is not available for this model.");
    if (drift) showDrift(drift);
    const ab = await optional(`/v1/models/${model.name}/ab`, $("ab"), "No A/B test is running for this model.");
    if (ab) showAb(ab);
    const retrain = await optional(`/v1/models/${model.name}/retrain`, $("retrain"), "Retraining is not available.");
    if (retrain) {
      const last = retrain.last_run;
      const rows = Object.entries(retrain.policy || {}).map(([key, value]) => [key, value]);
      rows.push(["last run", last ? `${last.status} (${last.reason || ""})` : "never"]);
      $("retrain").replaceChildren(table(["policy", "value"], rows));
    }
  } catch (error) {
    state.showError(error);
  }
}

function showDrift(report) {
  const verdict = report.verdict || report.status || "unknown";
  const rows = [];
  const features = report.features || {};
  for (const [name, f] of Object.entries(features)) {
    rows.push(typeof f === "object" ? [name, ...["statistic", "test", "p_value", "drifted"].map((k) => short(f[k]))] : [name, short(f)]);
  }
  $("drift").replaceChildren(
    text(`Verdict: ${verdict} · samples ${report.samples ?? "?"}`),
    rows.length ? table(["feature", "statistic", "test", "p-value", "drifted"], rows) : text("No features evaluated yet.")
  );
  $("drift").dataset.verdict = verdict;
  const history = report.history || report.windows || [];
  $("drift-plot").replaceChildren();
  if (history.length > 1) {
    const x = history.map((w, i) => w.time ?? w.evaluated_at ?? i);
    const drifted = history.map((w) => w.drifted_features ?? w.drifted ?? (w.status === "drift" ? 1 : 0));
    new uPlot(
      { title: "drift over time", width: 600, height: 180, series: [{}, { label: "drifted", stroke: "#a4000f" }] },
      [x, drifted.map(Number)],
      $("drift-plot")
    );
  }
}

function showAb(report) {
  const rows = Object.entries(report.versions || {}).map(([version, v]) => [
    version,
    v.requests,
    v.latency_ms ? `${short(v.latency_ms.p50)} / ${short(v.latency_ms.p95)} / ${short(v.latency_ms.p99)}` : "",
    short(v.mean_confidence),
    short(v.accuracy),
    short(v.prediction_mix),
  ]);
  $("ab").replaceChildren(
    text(`Weights ${short(report.weights)}`),
    table(["version", "requests", "latency p50/p95/p99 ms", "mean confidence", "accuracy", "prediction mix"], rows),
    text(`Tests: ${short(report.tests)}`)
  );
}

async function runBatch(state, model) {
  const files = [...$("batch-files").files];
  if (!model || !files.length) {
    state.showError(new Error("choose a zip or images first"));
    return;
  }
  state.clearError();
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  try {
    const job = await postForm(`/v1/models/${model.name}/batches`, form);
    const statusUrl = job.status_url || `/v1/models/${model.name}/batches/${job.id}`;
    for (;;) {
      const status = await getJson(statusUrl);
      $("batch-progress").value = status.progress ?? 0;
      $("batch-status").textContent = `${status.status}: ${status.frames_done} / ${status.frames_total ?? "?"} images`;
      if (["succeeded", "failed"].includes(status.status)) {
        const links = [];
        for (const [name, url] of Object.entries(status.artifacts || {})) {
          const a = document.createElement("a");
          a.className = "download";
          a.href = await fetchableUrl(url);
          a.download = name;
          a.textContent = `Download ${name}`;
          links.push(a);
        }
        $("batch-downloads").replaceChildren(...links);
        if (status.status === "failed") state.showError(new Error(`batch failed: ${status.error}`));
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  } catch (error) {
    if (error instanceof ApiError && [404, 405].includes(error.status) && error.code !== "model_not_found") {
      $("batch-status").textContent = "Batch jobs are not available on this gateway.";
    } else {
      state.showError(error);
    }
  }
}

function text(content) {
  const p = document.createElement("p");
  p.textContent = content;
  return p;
}

function short(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (typeof value === "object") return JSON.stringify(value).slice(0, 160);
  return String(value);
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    head.append(th);
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) tr.insertCell().textContent = short(cell);
  }
  return t;
}
