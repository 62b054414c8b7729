// The "To label" panel (Feedback page): the active-learning queue of the picked model, with each
// item's image and why the gateway picked it; the user picks one and completes it with a verdict or,
// for a classifier, the right class (POST /v1/models/{m}/feedback with to_label_id).
//
// A module of its own, loaded by index.html beside app.js: it follows the picked model through the
// picker itself (a change, or app.js setting it, which rewrites #model-info).

import { ApiError, fetchableUrl, getJson, postForm } from "./api.js";

const $ = (id) => document.getElementById(id);
const LIMIT = 50; // items listed, newest first
const REASONS = {
  low_confidence: "low confidence",
  class_based: "watched class",
  temporal_instability: "unstable between frames",
};

const panel = {
  model: null, // GET /v1/models/{m}: name, task, labels
  items: [],
  picked: null, // the item being labelled
  objectUrls: [], // thumbnails fetched with an API key, released on the next listing
};

function showError(error) {
  const banner = $("error");
  const status = error instanceof ApiError && error.status ? `${error.status}: ` : "";
  banner.textContent = `${status}${error.message || error}`;
  banner.hidden = false;
}

function say(message) {
  $("labeling-status").textContent = message;
}

async function followModel() {
  const name = $("model").value;
  if (!name || (panel.model && panel.model.name === name)) return;
  try {
    panel.model = await getJson(`/v1/models/${encodeURIComponent(name)}`);
  } catch (error) {
    showError(error);
    return;
  }
  pick(null);
  await refresh();
}

async function refresh() {
  const model = panel.model;
  if (!model) return;
  say("Loading the queue...");
  let listing;
  try {
    listing = await getJson(`/v1/models/${encodeURIComponent(model.name)}/feedback?state=to_label&limit=${LIMIT}`);
  } catch (error) {
    say("");
    showError(error);
    return;
  }
  if (panel.model !== model) return; // the user picked another model meanwhile
  panel.items = listing.items;
  await render();
  say(
    panel.items.length
      ? `${panel.items.length} item${panel.items.length === 1 ? "" : "s"} to label for ${model.name}.`
      : `Nothing to label for ${model.name}.`
  );
}

async function render() {
  for (const url of panel.objectUrls) URL.revokeObjectURL(url);
  panel.objectUrls = [];
  const list = $("labeling-list");
  const entries = await Promise.all(panel.items.map(entry));
  list.replaceChildren(...entries);
  if (panel.picked && !panel.items.some((item) => item.id === panel.picked.id)) pick(null);
}

async function imageUrl(item) {
  const url = await fetchableUrl(item.image_url);
  if (url.startsWith("blob:")) panel.objectUrls.push(url);
  return url;
}

async function entry(item) {
  const li = document.createElement("li");
  li.className = "result";
  li.dataset.id = item.id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary labeling-item";
  button.setAttribute("aria-pressed", String(panel.picked !== null && panel.picked.id === item.id));
  button.style.cssText = "display:block;width:100%;text-align:left;color:var(--ink)";
  const reason = REASONS[item.reason] || item.reason;
  const when = new Date(item.created_at * 1000).toLocaleString();
  const where = item.source === "video" ? `frame ${item.frame_index} of ${item.filename}` : item.filename;
  const thumbnail = document.createElement("img");
  thumbnail.alt = `${where}, queued for ${reason}`;
  thumbnail.style.cssText = "display:block;max-width:100%;max-height:160px;margin-bottom:4px";
  try {
    thumbnail.src = await imageUrl(item);
  } catch (error) {
    thumbnail.alt = `image unavailable: ${error.message}`;
  }
  const title = document.createElement("strong");
  title.className = "labeling-reason";
  title.textContent = `${reason} · score ${item.score.toFixed(2)}`;
  const detail = document.createElement("span");
  detail.className = "muted";
  detail.style.display = "block";
  detail.textContent = `${item.detail} · ${where} · version ${item.version || "?"} · ${when}`;
  button.append(thumbnail, title, detail);
  button.addEventListener("click", () => pick(item));
  li.append(button);
  return li;
}

// Show the picked item in the form (or hide the form when `item` is null).
function pick(item) {
  panel.picked = item;
  for (const button of document.querySelectorAll("#labeling-list .labeling-item")) {
    const pressed = item !== null && button.closest("li").dataset.id === item.id;
    button.setAttribute("aria-pressed", String(pressed));
    button.style.boxShadow = pressed ? "inset 0 0 0 3px var(--accent)" : "";
  }
  const form = $("labeling-form");
  form.hidden = item === null;
  if (item === null) return;
  const reason = REASONS[item.reason] || item.reason;
  $("labeling-picked").textContent = `Label ${item.filename} (${reason})`;
  $("labeling-detail").textContent = `${item.detail}. The model said: ${summary(item.prediction)}.`;
  const image = $("labeling-image");
  image.alt = `the input queued as ${reason}`;
  imageUrl(item).then((url) => (image.src = url), showError);
  for (const radio of form.querySelectorAll('input[name="verdict"]')) radio.checked = false;
  const classifier = panel.model && panel.model.task === "classification";
  $("labeling-label-row").hidden = !classifier;
  const select = $("labeling-label");
  select.replaceChildren(
    new Option("(no label: send the verdict only)", ""),
    ...(classifier ? panel.model.labels.map((label) => new Option(label.name, label.name)) : [])
  );
  $("labeling-picked").focus();
}

function summary(prediction) {
  if (!prediction) return "nothing";
  if (prediction.label) return `${prediction.label} (${Number(prediction.confidence).toFixed(2)})`;
  if (prediction.class_shares) {
    return Object.entries(prediction.class_shares)
      .map(([name, share]) => `${name} ${(100 * share).toFixed(1)}%`)
      .join(", ");
  }
  if (prediction.per_class) {
    return `${prediction.count} boxes: ` + Object.entries(prediction.per_class).map(([k, v]) => `${k} ${v}`).join(", ");
  }
  return JSON.stringify(prediction);
}

async function complete(event) {
  event.preventDefault();
  const item = panel.picked;
  if (!item) return;
  const verdict = document.querySelector('#labeling-form input[name="verdict"]:checked');
  const label = $("labeling-label-row").hidden ? "" : $("labeling-label").value;
  if (!verdict && !label) {
    say("Choose a verdict or a class label first.");
    $("labeling-correct").focus();
    return;
  }
  const form = new FormData();
  form.append("to_label_id", item.id);
  if (verdict) form.append("verdict", verdict.value);
  if (label) form.append("label", label);
  $("labeling-submit").disabled = true;
  try {
    const record = await postForm(`/v1/models/${encodeURIComponent(panel.model.name)}/feedback`, form);
    pick(null);
    await refresh();
    say(`Labelled ${item.filename}: stored as feedback ${record.id}. ${$("labeling-status").textContent}`);
    const next = document.querySelector("#labeling-list .labeling-item");
    (next || $("labeling-refresh")).focus();
  } catch (error) {
    if (error instanceof ApiError && [404, 409].includes(error.status)) await refresh(); // gone meanwhile
    showError(error);
  } finally {
    $("labeling-submit").disabled = false;
  }
}

function setup() {
  $("model").addEventListener("change", followModel);
  // app.js picks the first model (and re-picks after a key is entered) by rewriting #model-info.
  new MutationObserver(followModel).observe($("model-info"), { childList: true, characterData: true, subtree: true });
  $("tab-feedback").addEventListener("shown", refresh);
  $("labeling-refresh").addEventListener("click", refresh);
  $("labeling-form").addEventListener("submit", complete);
  $("labeling-cancel").addEventListener("click", () => {
    const picked = panel.picked;
    pick(null);
    const button = picked && document.querySelector(`#labeling-list li[data-id="${picked.id}"] button`);
    if (button) button.focus();
  });
  followModel();
}

setup();
