// Corrections drawn on a result: boxes for a detector, a painted mask for a segmenter.
//
// Each editor is a <details> under the result: opening it turns the result's canvas into the
// drawing surface (closing it shows the prediction again). Both work in image pixels: the canvas is
// shown scaled, so pointer positions are mapped back through its on-screen size. The mouse (or a
// finger, or a pen) draws; every box is also a row of number fields, and the brush can be moved and
// stamped with the arrow keys and Space, so everything can be done from the keyboard too.

import { classIdPng, drawMask } from "./draw.js";

const MIN_BOX_PX = 4; // a drag shorter than this on either side is a click, not a box
const UNDO_STEPS = 20;
let nextId = 0; // for the ids that tie labels and hints to controls

// ---------------------------------------------------------------------------------------------- boxes

// `detections` are the shown prediction's ({box: [x1, y1, x2, y2], label}); the editor starts from
// them, so the correction is the image's full set of boxes: delete wrong ones, draw missing ones.
// `send(fields)` posts the feedback form; `showPrediction()` redraws the prediction.
export function boxEditor({ canvas, image, detections, labels, send, showPrediction }) {
  const context = canvas.getContext("2d");
  const names = labels.map((label) => label.name);
  const colourOf = (name) => (labels.find((label) => label.name === name) || {}).color || "#ff0000";
  const boxes = detections.map((d) => ({ box: d.box.map(round1), label: d.label }));
  let selected = -1;
  let drag = null; // {from: [x, y], to: [x, y]} while a box is being drawn

  const { details, body } = panel("Draw boxes on the image", "correct boxes");
  const newClass = pick(names, names[0]);
  const list = document.createElement("ol");
  list.className = "box-list";
  const add = button("Add a box", "secondary");
  const sendButton = button("Send boxes");
  body.append(
    hint("Drag on the image to draw a box. Each box is listed below: change its numbers or class, or delete it."),
    labelled("Class of new boxes", newClass),
    list,
    row(add, sendButton)
  );

  const redraw = () => {
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    const scale = Math.max(1, canvas.width / 640);
    boxes.forEach((item, index) => {
      outline(context, item.box, colourOf(item.label), scale, `${index + 1} ${item.label}`, index === selected);
    });
    if (drag) outline(context, corners(drag.from, drag.to), colourOf(newClass.value), scale, "", true);
    canvas.dataset.editedBoxes = String(boxes.length);
  };
  const rebuildList = () => {
    list.replaceChildren(...boxes.map((item, index) => boxRow(item, index)));
    redraw();
  };
  const boxRow = (item, index) => {
    const li = document.createElement("li");
    li.className = "row";
    const number = index + 1;
    const title = document.createElement("span");
    title.className = "swatch";
    title.style.setProperty("--swatch", colourOf(item.label));
    title.textContent = `Box ${number}`;
    const limits = [canvas.width, canvas.height, canvas.width, canvas.height];
    const fields = ["x1", "y1", "x2", "y2"].map((name, k) => {
      const input = document.createElement("input");
      input.type = "number";
      input.min = "0";
      input.max = String(limits[k]);
      input.step = "1";
      input.value = String(item.box[k]);
      input.setAttribute("aria-label", `Box ${number} ${name}`);
      input.addEventListener("change", () => {
        item.box[k] = clamp(Number(input.value) || 0, 0, limits[k]);
        redraw();
      });
      return input;
    });
    const classPick = pick(names, item.label);
    classPick.setAttribute("aria-label", `Box ${number} class`);
    classPick.addEventListener("change", () => {
      item.label = classPick.value;
      title.style.setProperty("--swatch", colourOf(item.label));
      redraw();
    });
    const remove = button(`Delete box ${number}`, "secondary");
    remove.addEventListener("click", () => {
      boxes.splice(index, 1);
      selected = -1;
      rebuildList();
      (list.querySelector("input") || add).focus();
    });
    li.append(title, ...fields, classPick, remove);
    // The box whose fields have focus is outlined on the image, so a keyboard user sees which it is.
    li.addEventListener("focusin", () => {
      selected = index;
      redraw();
    });
    return li;
  };

  add.addEventListener("click", () => {
    // A box in the middle of the image, a quarter of its size: a start for the number fields.
    const [w, h] = [canvas.width, canvas.height];
    boxes.push({ box: [w * 0.375, h * 0.375, w * 0.625, h * 0.625].map(Math.round), label: newClass.value });
    rebuildList();
    list.lastElementChild.querySelector("input").focus();
  });
  sendButton.addEventListener("click", () => {
    const sorted = boxes.map((item) => ({
      box: corners(item.box.slice(0, 2), item.box.slice(2)).map(round1), // typed corners may be swapped
      label: item.label,
    }));
    send({ verdict: "wrong", boxes: JSON.stringify(sorted) });
  });

  canvas.addEventListener("pointerdown", (event) => {
    if (!details.open || event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    const point = imagePoint(canvas, event);
    drag = { from: point, to: point };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    drag.to = imagePoint(canvas, event);
    redraw();
  });
  const finish = (event) => {
    if (!drag) return;
    drag.to = imagePoint(canvas, event);
    const box = corners(drag.from, drag.to).map(round1);
    drag = null;
    if (box[2] - box[0] >= MIN_BOX_PX && box[3] - box[1] >= MIN_BOX_PX) {
      boxes.push({ box, label: newClass.value });
      selected = boxes.length - 1;
      rebuildList();
    } else {
      redraw();
    }
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", () => {
    drag = null;
    redraw();
  });

  details.addEventListener("toggle", () => {
    editing(canvas, details.open, "boxes");
    if (details.open) {
      rebuildList(); // edits made before closing are kept
    } else {
      showPrediction();
    }
  });
  return details;
}

function outline(context, box, colour, scale, text, highlighted) {
  const [x1, y1, x2, y2] = box;
  context.save();
  context.lineWidth = Math.max(2, 2 * scale);
  if (highlighted) {
    // A white dashed ring outside the box: visible on any colour, including the box's own.
    context.strokeStyle = "#fff";
    context.setLineDash([6 * scale, 4 * scale]);
    context.strokeRect(x1 - 3 * scale, y1 - 3 * scale, x2 - x1 + 6 * scale, y2 - y1 + 6 * scale);
    context.setLineDash([]);
  }
  context.strokeStyle = colour;
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  if (text) {
    context.font = `${Math.round(13 * scale)}px DejaVu Sans, sans-serif`;
    context.fillStyle = colour;
    const width = context.measureText(text).width + 6;
    context.fillRect(x1, Math.max(0, y1 - 17 * scale), width, 17 * scale);
    context.fillStyle = "#000";
    context.fillText(text, x1 + 3, Math.max(13 * scale, y1 - 4 * scale));
  }
  context.restore();
}

// ----------------------------------------------------------------------------------------------- mask

// `ids` is the predicted class-id array (row-major, the image's size); painting starts from a copy.
export function maskPainter({ canvas, image, ids: predicted, labels, send, showPrediction }) {
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const { width, height } = canvas;
  let ids = predicted.slice();
  const history = []; // snapshots before each stroke, for Undo
  let cursor = [Math.round(width / 2), Math.round(height / 2)];
  let last = null; // the previous point of the stroke being painted
  // Only what changed is redrawn, once per frame: a full redraw of a 12-megapixel photo per mouse
  // move would lag behind the pointer.
  let dirty = null; // [x0, y0, x1, y1] to redraw at the next frame
  let pending = false;

  const { details, body } = panel("Paint a corrected mask", "correct mask");
  const names = labels.map((label) => label.name);
  const brushClass = pick(names, names[Math.min(1, names.length - 1)]);
  brushClass.append(new Option("eraser (background)", "eraser"));
  const size = document.createElement("input");
  size.type = "range";
  size.min = "2";
  size.max = String(Math.max(8, Math.round(Math.min(width, height) / 3)));
  size.value = String(Math.max(6, Math.round(Math.min(width, height) / 25)));
  const sizeShown = document.createElement("output");
  sizeShown.textContent = `${size.value} px`;
  size.addEventListener("input", () => {
    sizeShown.textContent = `${size.value} px`;
    touchAll(); // the old brush outline may be larger than the new one
  });
  const undo = button("Undo", "secondary");
  const resetButton = button("Reset to prediction", "secondary");
  const sendButton = button("Send painted mask");
  const help = hint(
    "Paint with the mouse over the predicted mask. Keyboard: focus the image, move the brush with the " +
      "arrow keys (Shift: faster; Alt: paint while moving), press Space to paint."
  );
  help.id = `paint-help-${++nextId}`;
  body.append(
    help,
    row(labelled("Brush class", brushClass), labelled("Brush size", size), sizeShown),
    row(undo, resetButton, sendButton)
  );

  const classId = () => (brushClass.value === "eraser" ? 0 : names.indexOf(brushClass.value));
  const redraw = () => {
    pending = false;
    const [x0, y0] = [clamp(Math.floor(dirty[0]), 0, width), clamp(Math.floor(dirty[1]), 0, height)];
    const [x1, y1] = [clamp(Math.ceil(dirty[2]), 0, width), clamp(Math.ceil(dirty[3]), 0, height)];
    dirty = null;
    if (!details.open || x1 <= x0 || y1 <= y0) return; // closed meanwhile: the prediction is shown
    const [sx, sy] = [image.width / width, image.height / height];
    const [w, h] = [x1 - x0, y1 - y0];
    context.drawImage(image, x0 * sx, y0 * sy, w * sx, h * sy, x0, y0, w, h);
    drawMask(context, ids, width, height, labels, 0.5, [x0, y0, w, h]);
    // The brush outline in black and white, so it shows on any colour.
    const radius = Number(size.value) / 2;
    for (const [colour, grow] of [["#000", 1], ["#fff", 0]]) {
      context.beginPath();
      context.arc(cursor[0], cursor[1], radius + grow, 0, 2 * Math.PI);
      context.strokeStyle = colour;
      context.lineWidth = 1;
      context.stroke();
    }
  };
  const touch = (x0, y0, x1, y1) => {
    dirty = dirty
      ? [Math.min(dirty[0], x0), Math.min(dirty[1], y0), Math.max(dirty[2], x1), Math.max(dirty[3], y1)]
      : [x0, y0, x1, y1];
    if (!pending) {
      pending = true;
      requestAnimationFrame(redraw);
    }
  };
  const touchAll = () => touch(0, 0, width, height);
  const moveCursor = (to) => {
    const reach = Number(size.value) / 2 + 3; // the outline's width and antialiasing
    for (const [x, y] of [cursor, to]) touch(x - reach, y - reach, x + reach, y + reach);
    cursor = to;
  };
  const remember = () => {
    history.push(ids.slice());
    if (history.length > UNDO_STEPS) history.shift();
  };
  const stroke = (from, to) => {
    // Stamps along the segment, closer than the radius, so a fast drag leaves no gaps.
    const radius = Number(size.value) / 2;
    const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1]) / Math.max(1, radius / 2)));
    for (let s = 0; s <= steps; s++) {
      const x = from[0] + ((to[0] - from[0]) * s) / steps;
      const y = from[1] + ((to[1] - from[1]) * s) / steps;
      stamp(ids, width, height, x, y, radius, classId());
    }
    const reach = radius + 1;
    const [left, top] = [Math.min(from[0], to[0]) - reach, Math.min(from[1], to[1]) - reach];
    touch(left, top, Math.max(from[0], to[0]) + reach, Math.max(from[1], to[1]) + reach);
  };

  canvas.addEventListener("pointerdown", (event) => {
    if (!details.open || event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    remember();
    moveCursor(imagePoint(canvas, event));
    last = cursor;
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!details.open) return;
    moveCursor(imagePoint(canvas, event));
    if (last) {
      stroke(last, cursor);
      last = cursor;
    }
  });
  const end = () => (last = null);
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("keydown", (event) => {
    if (!details.open) return;
    const step = event.shiftKey ? 25 : 5;
    const move = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[event.key];
    if (move) {
      event.preventDefault();
      const next = [clamp(cursor[0] + move[0], 0, width - 1), clamp(cursor[1] + move[1], 0, height - 1)];
      if (event.altKey) stroke(cursor, next); // Alt+arrow paints a line as it moves
      moveCursor(next);
    } else if (event.key === " " || event.key === "Enter") {
      event.preventDefault();
      remember();
      stroke(cursor, cursor);
    }
  });
  undo.addEventListener("click", () => {
    if (history.length) ids = history.pop();
    touchAll();
  });
  resetButton.addEventListener("click", () => {
    remember();
    ids = predicted.slice();
    touchAll();
  });
  sendButton.addEventListener("click", async () => {
    const png = await classIdPng(ids, width, height);
    send({ verdict: "wrong", mask: new File([png], "mask.png", { type: "image/png" }) });
  });

  details.addEventListener("toggle", () => {
    editing(canvas, details.open, "mask");
    if (details.open) {
      canvas.tabIndex = 0; // the keyboard's brush
      canvas.setAttribute("aria-describedby", help.id);
      touchAll();
    } else {
      canvas.removeAttribute("tabindex");
      canvas.removeAttribute("aria-describedby");
      showPrediction();
    }
  });
  return details;
}

// A filled disc of `value` in a row-major id array (row spans: one fill per row).
function stamp(ids, width, height, cx, cy, radius, value) {
  const top = Math.max(0, Math.ceil(cy - radius));
  const bottom = Math.min(height - 1, Math.floor(cy + radius));
  for (let y = top; y <= bottom; y++) {
    const half = Math.sqrt(Math.max(0, radius * radius - (y - cy) * (y - cy)));
    const left = Math.max(0, Math.ceil(cx - half));
    const right = Math.min(width - 1, Math.floor(cx + half));
    if (right >= left) ids.fill(value, y * width + left, y * width + right + 1);
  }
}

// --------------------------------------------------------------------------------------------- shared

// A pointer event's position in image pixels (the canvas is shown scaled to fit its card).
function imagePoint(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  return [
    clamp(((event.clientX - rect.left) * canvas.width) / rect.width, 0, canvas.width),
    clamp(((event.clientY - rect.top) * canvas.height) / rect.height, 0, canvas.height),
  ];
}

// The card grows to the full row while editing: a bigger image is easier to draw on.
function editing(canvas, on, what) {
  const card = canvas.closest(".result");
  if (card) card.classList.toggle("editing", on);
  canvas.classList.toggle("drawing", on);
  if (on) canvas.dataset.editing = what;
  else delete canvas.dataset.editing;
}

function corners(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

function panel(title, className) {
  const details = document.createElement("details");
  details.className = className;
  const summary = document.createElement("summary");
  summary.textContent = title;
  const body = document.createElement("div");
  details.append(summary, body);
  return { details, body };
}

function pick(names, value) {
  const select = document.createElement("select");
  select.append(...names.map((name) => new Option(name, name)));
  select.value = value;
  return select;
}

function button(text, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  return b;
}

function labelled(text, control) {
  const label = document.createElement("label");
  label.textContent = text;
  control.id ||= `correct-${++nextId}`;
  label.htmlFor = control.id;
  const span = document.createElement("span");
  span.className = "row";
  span.append(label, control);
  return span;
}

function hint(text) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = text;
  return p;
}

function row(...children) {
  const div = document.createElement("div");
  div.className = "row";
  div.append(...children);
  return div;
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round1(value) {
  return Math.round(value * 10) / 10;
}
