// Feedback counts (the "to label" queue is labeling.js's); drift, A/B, retraining and batch jobs. Routes that this
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
  // The drift report changes with every evaluation: poll it while the Monitoring tab is on screen.
  setInterval(() => {
    if (state.model && !$("page-monitoring").hidden && document.visibilityState === "visible") {
      refreshDrift(state, state.model);
    }
  }, DRIFT_POLL_MS);
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
    const shown = ["total", "correct", "wrong", "corrections", "to_label"].map((key) => [key, counts[key]]);
    for (const [version, byVersion] of Object.entries(counts.by_version || {})) {
      shown.push([`version ${version}`, Object.entries(byVersion).map(([k, v]) => `${k} ${v}`).join(", ")]);
    }
    $("feedback-counts").replaceChildren(table(["", "count"], shown));
    $("feedback-counts").dataset.total = String(counts.total);
  } catch (error) {
    state.showError(error);
  }
}

async function refreshDrift(state, model) {
  try {
    const missing = "Drift monitoring is not available for this model.";
    const drift = await optional(`/v1/models/${model.name}/drift`, $("drift"), missing);
    if (drift) showDrift(drift);
    else for (const id of ["drift-plot", "drift-tests"]) $(id).replaceChildren();
  } catch (error) {
    state.showError(error);
  }
}

async function loadMonitoring(state, model) {
  try {
    await refreshDrift(state, model);
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

// ---- drift: GET /v1/models/{m}/drift is the monitor's last evaluation (gateway/drift.py,
// clients/drift.py): status ok | drift | insufficient_data, the window's size, the settings it was
// judged by and, once the window is big enough, one test per feature, plus ``history``: the verdicts
// of its recent evaluations, which the page plots (an older gateway without it: the page keeps the
// evaluations it has seen, per model, for this tab).

const DRIFT_POLL_MS = 5000; // while the Monitoring tab is shown
const HISTORY_POINTS = 720; // an hour at the poll rate
const VERDICTS = { ok: "no drift", drift: "DRIFT", insufficient_data: "not enough samples yet" };
// Whole seconds and up on the time axis (uPlot would otherwise pick sub-second ticks for a short history).
const TIME_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
const clock = (unixSeconds) => new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });

function driftHistory(model) {
  try {
    return JSON.parse(sessionStorage.getItem(`prodseg.drift.${model}`) || "[]");
  } catch {
    return [];
  }
}

// One point per evaluation (a report fetched twice between evaluations counts once).
function remember(report) {
  if (Array.isArray(report.history)) return report.history.slice(-HISTORY_POINTS);
  const history = driftHistory(report.model);
  if (history.length && history.at(-1).evaluated_at === report.evaluated_at) return history;
  history.push({
    evaluated_at: report.evaluated_at,
    status: report.status,
    samples: report.samples,
    drifted: (report.drifted_features || []).length,
  });
  const kept = history.slice(-HISTORY_POINTS);
  sessionStorage.setItem(`prodseg.drift.${report.model}`, JSON.stringify(kept));
  return kept;
}

function showDrift(report) {
  const verdict = report.status;
  const drifted = report.drifted_features || [];
  const headline = document.createElement("p");
  headline.className = `verdict verdict-${verdict}`;
  headline.id = "drift-verdict";
  headline.textContent = `Verdict: ${VERDICTS[verdict] || verdict}`;
  const when = report.evaluated_at ? clock(report.evaluated_at) : "?";
  const facts = [
    ["reference of version", report.version ?? "?"],
    ["samples in the window", `${report.samples} of ${report.window} (a verdict needs ${report.min_samples})`],
    ["reference images", report.reference_samples],
    ["features tested", report.tests ?? 0],
    ["drifted features", drifted.length ? `${drifted.join(", ")} (${(100 * report.drifted_share).toFixed(0)}%)` : "none"],
    [
      "decision",
      `drift when ${report.min_drifted}+ feature(s) have p < ${report.alpha} after ${report.correction} correction`,
    ],
    ["evaluated at", when],
    ["waiting to be measured", report.queued ?? 0],
  ];
  const features = Object.entries(report.features || {}).sort(
    ([, a], [, b]) => b.drifted - a.drifted || a.p_value_corrected - b.p_value_corrected
  );
  $("drift").replaceChildren(headline, definitions(facts));
  $("drift-tests").replaceChildren(
    features.length ? featureTable(features) : text("No features are tested until the window holds enough samples.")
  );
  $("drift").dataset.verdict = verdict;
  $("drift").dataset.state = "available";
  drawDriftHistory(remember(report));
}

// One row per feature, most suspicious first: the deciding test (KS for numbers, chi-square for a
// class mix), its p-value before and after the correction, and how the window moved.
function featureTable(features) {
  const headers = ["feature", "test", "statistic", "p-value", "corrected p-value", "drifted", "PSI"];
  const t = table([...headers, "Wasserstein (ref. SD)", "reference → window"], []);
  t.id = "drift-features";
  const body = t.tBodies[0];
  for (const [name, f] of features) {
    const tr = body.insertRow();
    tr.dataset.feature = name;
    tr.classList.toggle("drifted", f.drifted);
    const moved =
      f.kind === "numeric"
        ? `mean ${number(f.reference_mean)} → ${number(f.window_mean)}`
        : Object.keys(f.window_share || {})
            .map((c) => `${c} ${number(f.reference_share[c])} → ${number(f.window_share[c])}`)
            .join(", ");
    const cells = [
      name,
      f.test,
      number(f.statistic),
      number(f.p_value),
      number(f.p_value_corrected),
      f.drifted ? "yes" : "no",
      number(f.psi), // numeric features only
      number(f.wasserstein),
      moved,
    ];
    for (const value of cells) tr.insertCell().textContent = value;
  }
  return t;
}

function drawDriftHistory(history) {
  const container = $("drift-plot");
  container.replaceChildren();
  container.dataset.points = String(history.length);
  const alarms = history.filter((point) => point.status === "drift").length;
  const since = history.length ? clock(history[0].evaluated_at) : "";
  container.append(
    text(
      history.length > 1
        ? `History: ${history.length} evaluations since ${since}, drift in ${alarms}.`
        : "History: the plot starts after two evaluations (the page refreshes every 5 s)."
    )
  );
  if (history.length < 2) return;
  const plot = document.createElement("div");
  container.append(plot);
  const stepped = uPlot.paths.stepped({ align: 1 });
  const fromZero = (u, low, high) => [0, Math.max(high, 1)];
  new uPlot(
    {
      title: "Drift over time (evaluations seen in this tab)",
      width: Math.min(container.clientWidth || 800, 1000),
      height: 200,
      scales: { y: { range: fromZero }, samples: { range: fromZero } },
      axes: [
        { space: 90, incrs: TIME_STEPS_S, values: (u, ticks) => ticks.map(clock) },
        { label: "drifted features" },
        { scale: "samples", side: 1, label: "samples", grid: { show: false } },
      ],
      // Steps, not slopes: a value holds from one evaluation until the next.
      series: [
        { label: "time", value: (u, t) => (t == null ? "-" : clock(t)) },
        { label: "drifted features", stroke: "#a4000f", width: 2, points: { show: true }, paths: stepped },
        { label: "window samples", stroke: "#0b5cad", scale: "samples", dash: [6, 4], paths: stepped },
      ],
    },
    [history.map((p) => p.evaluated_at), history.map((p) => p.drifted), history.map((p) => p.samples)],
    plot
  );
}

// ---- A/B: GET /v1/models/{m}/ab (gateway/ab.py): the split, each version's requests, latency,
// prediction mix, confidence and accuracy on labelled feedback, and whether the first two versions
// differ by more than chance.

function showAb(report) {
  const versions = Object.entries(report.versions || {});
  const mix = (shares) => Object.entries(shares || {}).map(([label, share]) => `${label} ${number(share)}`).join(", ");
  const rows = versions.map(([version, v]) => [
    version,
    `${report.weights[version]}%`,
    v.requests,
    v.errors,
    ["p50", "p95", "p99"].map((q) => number(v.latency_ms[q])).join(" / "),
    number(v.mean_confidence),
    v.accuracy === null ? `- (${v.labelled} labelled)` : `${number(v.accuracy)} (${v.labelled} labelled)`,
    mix(v.prediction_mix),
  ]);
  const headers = ["version", "weight", "requests", "errors", "latency p50 / p95 / p99 (ms)"];
  const perVersion = table([...headers, "mean confidence", "accuracy", "prediction mix"], rows);
  perVersion.id = "ab-versions";
  const tests = report.tests || {};
  const compared = (tests.compared || []).join(" vs ");
  const testRows = ["prediction_mix", "confidence", "accuracy"].map((name) => {
    const t = tests[name];
    const what = name.replace("_", " ");
    return t ? [what, t.test, number(t.statistic), number(t.p_value)] : [what, "too little data yet", "", ""];
  });
  const significance = table(["difference in", "test", "statistic", "p-value"], testRows);
  significance.id = "ab-tests";
  $("ab").replaceChildren(
    text(`Test ${report.id} since ${new Date(report.started_at * 1000).toLocaleString()}: versions ${compared} compared.`),
    perVersion,
    significance
  );
  $("ab").dataset.state = "running";
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

// A number as a person reads it: 3 significant digits, tiny p-values in exponent form.
function number(value) {
  if (value === undefined || value === null) return "-";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  if (value !== 0 && Math.abs(value) < 0.001) return value.toExponential(2);
  return String(Number(value.toPrecision(3)));
}

function definitions(pairs) {
  const dl = document.createElement("dl");
  dl.className = "stats";
  for (const [term, value] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dl.append(dt, dd);
  }
  return dl;
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
