// Video: upload, watch the job's progress, play input and overlay side by side, plot the task's JSONL
// over time, download every artefact. The overlay is played as the job wrote it (no re-encode).

import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";
import { fetchableUrl, getJson, postForm, request } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const TIMELINES = { segmentation: "timeline.jsonl", detection: "detections.jsonl", classification: "predictions.jsonl" };

export function setupVideo(state) {
  let plot = null;
  state.onModelChange(() => {
    $("video-downloads").replaceChildren();
    $("video-status").textContent = "";
  });
  $("video-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("video-file").files[0];
    if (!state.model || !file) {
      state.showError(new Error("choose a video file first"));
      return;
    }
    state.clearError();
    const model = state.model;
    $("video-input").src = URL.createObjectURL(file);
    $("video-overlay").removeAttribute("src");
    $("video-downloads").replaceChildren();
    $("video-progress").value = 0;
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      $("video-status").textContent = "uploading…";
      const accepted = await postForm(`/v1/models/${model.name}/videos`, form);
      const job = await waitForJob(accepted.status_url);
      if (job.status === "failed") throw new Error(`the video job failed: ${job.error}`);
      const urls = artifactUrls(job, accepted.status_url);
      $("video-overlay").src = await fetchableUrl(urls["overlay.mp4"]);
      $("video-downloads").replaceChildren(...(await downloadLinks(urls)));
      const rows = await jsonl(urls[TIMELINES[model.task]]);
      if (plot) plot.destroy();
      plot = drawPlot(model, rows);
      $("video-status").textContent = `done: ${job.frames_done} frames`;
    } catch (error) {
      $("video-status").textContent = "";
      state.showError(error);
    }
  });
}

async function waitForJob(statusUrl) {
  for (;;) {
    const job = await getJson(statusUrl);
    const progress = job.progress ?? (job.frames_total ? job.frames_done / job.frames_total : 0);
    $("video-progress").value = progress;
    $("video-status").textContent = `${job.status}: ${job.frames_done} / ${job.frames_total ?? "?"} frames`;
    if (job.status === "succeeded" || job.status === "failed") return job;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function artifactUrls(job, statusUrl) {
  const artifacts = job.artifacts || {};
  if (Array.isArray(artifacts)) return Object.fromEntries(artifacts.map((name) => [name, `${statusUrl}/${name}`]));
  return artifacts;
}

async function downloadLinks(urls) {
  const links = [];
  for (const [name, url] of Object.entries(urls)) {
    const a = document.createElement("a");
    a.className = "download";
    a.href = await fetchableUrl(url);
    a.download = name;
    a.textContent = `Download ${name}`;
    links.push(a);
  }
  return links;
}

async function jsonl(url) {
  if (!url) return [];
  const text = await (await request(url)).text();
  return text
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line));
}

// One series per label: pixel share (segmentation), detections per class (detection), probability
// (classification).
function drawPlot(model, rows) {
  const names = model.labels.map((l) => l.name);
  const frames = rows.map((row, index) => row.frame ?? index);
  const value = {
    segmentation: (row, name) => (row.class_shares || {})[name] ?? 0,
    detection: (row, name) => (row.detections || []).filter((d) => d.label === name).length,
    classification: (row, name) => (row.probabilities || {})[name] ?? (row.label === name ? row.confidence : 0),
  }[model.task];
  const data = [frames, ...names.map((name) => rows.map((row) => value(row, name)))];
  const unit = { segmentation: "pixel share", detection: "detections", classification: "probability" }[model.task];
  const container = $("video-plot");
  container.replaceChildren();
  container.dataset.points = String(rows.length);
  const width = Math.min(container.clientWidth || 800, 1200);
  return new uPlot(
    {
      title: `${unit} per frame`,
      width,
      height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "frame" }, { label: unit }],
      series: [{ label: "frame" }, ...model.labels.map((l) => ({ label: l.name, stroke: l.color, width: 2 }))],
    },
    data,
    container
  );
}
