// The page set's entry point: model picker, tabs, the API key dialog and the error banner; each page
// lives in its own module and reads the picked model from the shared `state`.

import { ApiError, apiKey, getJson, setApiKey } from "./api.js";
import { setupImages } from "./images.js";
import { setupLive } from "./live.js";
import { setupMonitoring } from "./monitoring.js";
import { setupVideo } from "./video.js";

const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  model: null, // the picked model's entry of GET /v1/models
  listeners: [], // called when the model changes
  onModelChange(callback) {
    this.listeners.push(callback);
  },
  showError,
  clearError,
};

function showError(error) {
  const banner = $("error");
  const message = error instanceof ApiError ? error.message : String(error.message || error);
  const status = error instanceof ApiError && error.status ? `${error.status}: ` : "";
  banner.textContent = `${status}${message}`;
  banner.hidden = false;
  if (error instanceof ApiError && error.status === 401) askForKey(message);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function askForKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-reason").textContent = reason
    ? `${reason}. The key is kept for this browser tab only.`
    : "The key is kept for this browser tab only.";
  $("key-input").value = apiKey();
  dialog.showModal();
}

function setupKeyDialog() {
  $("key-button").addEventListener("click", () => askForKey(""));
  $("key-dialog").addEventListener("close", () => {
    if ($("key-dialog").returnValue !== "save") return;
    setApiKey($("key-input").value.trim());
    clearError();
    loadModels();
  });
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
    tab.dispatchEvent(new CustomEvent("shown", { bubbles: true }));
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(index + step + tabs.length) % tabs.length]);
    });
  });
}

async function loadModels() {
  try {
    const listing = await getJson("/v1/models");
    state.models = listing.models;
    const picker = $("model");
    const previous = picker.value || new URLSearchParams(location.search).get("model");
    picker.replaceChildren(
      ...listing.models.map((m) => new Option(`${m.name} (${m.task})`, m.name, false, false))
    );
    const pick = listing.models.find((m) => m.name === previous) ? previous : listing.default_model;
    picker.value = pick || (listing.models[0] && listing.models[0].name) || "";
    pickModel();
  } catch (error) {
    showError(error);
  }
}

function pickModel() {
  state.model = state.models.find((m) => m.name === $("model").value) || null;
  const m = state.model;
  $("model-info").textContent = m
    ? `${m.task} · ${m.labels.length} labels · version ${(m.versions.ready || []).join(", ") || "none ready"}` +
      ` · ${m.input_size.width}x${m.input_size.height}`
    : "no model";
  document.body.dataset.task = m ? m.task : "";
  for (const listener of state.listeners) listener(m);
}

setupTabs();
setupKeyDialog();
$("model").addEventListener("change", () => {
  clearError();
  pickModel();
});
setupImages(state);
setupVideo(state);
setupLive(state);
setupMonitoring(state);
loadModels();
