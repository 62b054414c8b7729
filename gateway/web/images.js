// Images: drop one or many, see each with its mask, boxes or label, send feedback on each, download.

import { postForm } from "./api.js";
import { boxEditor, maskPainter } from "./correct.js";
import { classIdPng, classIds, drawBoxes, drawLabel, drawMask } from "./draw.js";

const $ = (id) => document.getElementById(id);

export function setupImages(state) {
  const input = $("image-files");
  const zone = $("drop-zone");
  let dropped = null; // files dropped on the zone (the file input keeps its own)

  state.onModelChange((model) => {
    $("confidence-row").hidden = !model || model.task !== "detection";
    $("legend").replaceChildren(...(model ? legend(model.labels) : []));
    $("image-results").replaceChildren();
    $("images-downloads").replaceChildren();
  });
  $("confidence").addEventListener("input", () => ($("confidence-value").value = $("confidence").value));
  input.addEventListener("change", () => (dropped = null));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    dropped = [...event.dataTransfer.files];
    $("images-status").textContent = `${dropped.length} file(s) ready`;
  });

  $("images-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = dropped || [...input.files];
    if (!state.model || files.length === 0) {
      state.showError(new Error("choose one or more images first"));
      return;
    }
    state.clearError();
    $("images-status").textContent = "predicting…";
    try {
      await predict(state, state.model, files);
    } catch (error) {
      $("images-status").textContent = "";
      state.showError(error);
    }
  });
}

function legend(labels) {
  return labels.map((label) => {
    const item = document.createElement("span");
    item.style.setProperty("--swatch", label.color);
    item.textContent = label.name;
    return item;
  });
}

async function predict(state, model, files) {
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const query =
    model.task === "segmentation" ? "?format=json" : model.task === "detection" ? `?confidence=${$("confidence").value}` : "";
  const started = performance.now();
  const body = await postForm(`/v1/models/${model.name}/images${query}`, form);
  const elapsed = performance.now() - started;
  $("images-status").textContent =
    `${body.results.length} result(s) from ${body.model} version ${body.version} in ${elapsed.toFixed(0)} ms`;
  const cards = [];
  const idArrays = [];
  for (const [index, result] of body.results.entries()) {
    const { card, ids } = await resultCard(state, model, files[index], result);
    cards.push(card);
    idArrays.push(ids);
  }
  $("image-results").replaceChildren(...cards);
  $("images-downloads").replaceChildren(...downloads(model, body, idArrays));
}

async function resultCard(state, model, file, result) {
  const card = document.createElement("article");
  card.className = "result";
  card.dataset.predictionId = result.prediction_id;
  const title = document.createElement("h3");
  title.textContent = result.filename;
  const canvas = document.createElement("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const image = await createImageBitmap(file); // kept: the correction editors redraw from it
  const ids = model.task === "segmentation" ? classIds(result) : null;
  // The image with the prediction drawn over it (again after a correction editor closes).
  const showPrediction = () => {
    context.drawImage(image, 0, 0, result.width, result.height);
    if (model.task === "segmentation") {
      canvas.dataset.paintedPixels = String(drawMask(context, ids, result.width, result.height, model.labels));
    } else if (model.task === "detection") {
      drawBoxes(context, result.detections, model.labels, Math.max(1, result.width / 640));
    } else {
      drawLabel(context, result, result.width);
    }
  };
  showPrediction();
  const summary = document.createElement("p");
  summary.className = "summary";
  if (model.task === "segmentation") {
    summary.textContent = result.masks
      .map((m) => `${m.label}: ${((100 * m.pixels) / (result.width * result.height)).toFixed(1)}%`)
      .join(" · ");
  } else if (model.task === "detection") {
    canvas.dataset.boxes = String(result.detections.length);
    summary.textContent = `${result.detections.length} detection(s)`;
  } else {
    canvas.dataset.label = result.label;
    summary.textContent = `${result.label} (${(100 * result.confidence).toFixed(1)}%)`;
  }
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${result.filename}: ${summary.textContent}`);
  const drawing = { canvas, image, ids, showPrediction };
  card.append(title, canvas, summary, feedbackForm(state, model, result, drawing));
  return { card, ids };
}

// Correct / wrong, and a correction in the task's form; posted with the prediction's id. Boxes and
// masks are drawn on the result's canvas (correct.js); a mask can also be uploaded as a file.
function feedbackForm(state, model, result, drawing) {
  const form = document.createElement("form");
  form.className = "feedback row";
  form.addEventListener("submit", (event) => event.preventDefault()); // Enter in a field sends nothing
  const id = result.prediction_id;
  const status = document.createElement("span");
  status.className = "muted feedback-status";
  status.setAttribute("aria-live", "polite");
  const send = async (fields) => {
    const body = new FormData();
    body.append("prediction_id", id);
    for (const [name, value] of Object.entries(fields)) body.append(name, value);
    try {
      const record = await postForm(`/v1/models/${model.name}/feedback`, body);
      form.dataset.feedbackId = record.id; // the stored entry (its files are named by it)
      status.textContent = `feedback stored (${record.kind}${record.verdict ? ", " + record.verdict : ""})`;
    } catch (error) {
      status.textContent = "";
      state.showError(error);
    }
  };
  const button = (text, fields) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary";
    b.textContent = text;
    b.addEventListener("click", () => send(fields()));
    return b;
  };
  form.append(button("Correct", () => ({ verdict: "correct" })), button("Wrong", () => ({ verdict: "wrong" })));
  const label = (text, control) => {
    const l = document.createElement("label");
    l.textContent = text;
    control.id = `${text.replace(/\W+/g, "-").toLowerCase()}-${id}`;
    l.htmlFor = control.id;
    return l;
  };
  if (model.task === "classification") {
    const select = document.createElement("select");
    select.append(...model.labels.map((l) => new Option(l.name, l.name)));
    select.value = result.label;
    form.append(label("Correct class", select), select);
    form.append(button("Send correction", () => ({ verdict: "wrong", label: select.value })));
  } else if (model.task === "detection") {
    form.append(boxEditor({ ...drawing, detections: result.detections, labels: model.labels, send }));
  } else {
    form.append(maskPainter({ ...drawing, labels: model.labels, send }));
    const mask = document.createElement("input");
    mask.type = "file";
    mask.accept = "image/png";
    form.append(label("Corrected mask (PNG of class ids)", mask), mask);
    form.append(button("Send mask", () => (mask.files[0] ? { verdict: "wrong", mask: mask.files[0] } : {})));
  }
  form.append(status);
  return form;
}

function link(text, blob, filename) {
  const a = document.createElement("a");
  a.className = "download";
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.textContent = text;
  return a;
}

function downloads(model, body, idArrays) {
  const links = [link("Results (JSON)", new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }), "predictions.json")];
  if (model.task === "classification") {
    const names = model.labels.map((l) => l.name);
    const rows = [["filename", "label", "confidence", ...names].join(",")];
    for (const r of body.results) {
      rows.push([csv(r.filename), csv(r.label), r.confidence, ...names.map((n) => r.probabilities[n])].join(","));
    }
    links.push(link("Results (CSV)", new Blob([rows.join("\n") + "\n"], { type: "text/csv" }), "predictions.csv"));
  } else if (model.task === "detection") {
    const rows = ["filename,label,score,x1,y1,x2,y2"];
    for (const r of body.results) {
      for (const d of r.detections) rows.push([csv(r.filename), csv(d.label), d.score, ...d.box].join(","));
    }
    links.push(link("Detections (CSV)", new Blob([rows.join("\n") + "\n"], { type: "text/csv" }), "detections.csv"));
  } else {
    body.results.forEach((r, index) => {
      const a = document.createElement("a");
      a.className = "download";
      a.textContent = `Mask ${r.filename} (PNG)`;
      a.download = `${r.filename.replace(/\.[^.]+$/, "")}_mask.png`;
      classIdPng(idArrays[index], r.width, r.height).then((blob) => (a.href = URL.createObjectURL(blob)));
      links.push(a);
    });
  }
  return links;
}

function csv(text) {
  return /[",\n]/.test(text) ? `"${String(text).replace(/"/g, '""')}"` : text;
}
