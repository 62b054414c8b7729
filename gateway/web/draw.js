// Drawing a prediction over its image on a canvas, in the label map's colours.

export function hexToRgb(hex) {
  const value = parseInt(hex.replace("#", ""), 16);
  return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
}

// COCO uncompressed RLE (column-major, counts start with a run of zeros) -> Uint8Array [h*w] row-major.
export function decodeRle(counts, height, width) {
  const out = new Uint8Array(height * width);
  let index = 0;
  for (let i = 0; i < counts.length; i++) {
    const run = counts[i];
    if (i % 2 === 1) {
      for (let k = index; k < index + run; k++) {
        const column = Math.floor(k / height);
        const row = k % height;
        out[row * width + column] = 1;
      }
    }
    index += run;
  }
  return out;
}

// The per-class RLE masks of a segmentation result -> one class-id array, row-major.
export function classIds(result) {
  const ids = new Uint8Array(result.height * result.width);
  for (const mask of result.masks) {
    const [height, width] = mask.rle.size;
    const binary = decodeRle(mask.rle.counts, height, width);
    for (let i = 0; i < binary.length; i++) if (binary[i]) ids[i] = mask.class_id;
  }
  return ids;
}

// The live socket's runs [class_id, length, ...] (row-major) -> class-id array.
export function classIdsFromRuns(runs, size) {
  const ids = new Uint8Array(size);
  let index = 0;
  for (let i = 0; i < runs.length; i += 2) {
    ids.fill(runs[i], index, index + runs[i + 1]);
    index += runs[i + 1];
  }
  return ids;
}

// Blend class colours over the canvas's pixels (background, class 0, is left as it is).
export function drawMask(context, ids, width, height, labels, alpha = 0.5) {
  const image = context.getImageData(0, 0, width, height);
  const colours = labels.map((label) => hexToRgb(label.color));
  let painted = 0;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id === 0 || !colours[id]) continue;
    const [r, g, b] = colours[id];
    const p = i * 4;
    image.data[p] = image.data[p] * (1 - alpha) + r * alpha;
    image.data[p + 1] = image.data[p + 1] * (1 - alpha) + g * alpha;
    image.data[p + 2] = image.data[p + 2] * (1 - alpha) + b * alpha;
    painted++;
  }
  context.putImageData(image, 0, 0);
  return painted;
}

export function drawBoxes(context, detections, labels, scale = 1) {
  context.lineWidth = Math.max(2, 2 * scale);
  context.font = `${Math.round(14 * scale)}px DejaVu Sans, sans-serif`;
  for (const d of detections) {
    const colour = (labels[d.class_id] || {}).color || "#ff0000";
    const [x1, y1, x2, y2] = d.box;
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const textWidth = context.measureText(text).width + 6;
    context.fillStyle = colour;
    context.fillRect(x1, Math.max(0, y1 - 18 * scale), textWidth, 18 * scale);
    context.fillStyle = "#000";
    context.fillText(text, x1 + 3, Math.max(14 * scale, y1 - 4 * scale));
  }
}

export function drawLabel(context, result, width) {
  const text = `${result.label} ${(result.confidence * 100).toFixed(1)}%`;
  const size = Math.max(14, Math.round(width / 30));
  context.font = `${size}px DejaVu Sans, sans-serif`;
  context.fillStyle = "rgba(0, 0, 0, 0.65)";
  context.fillRect(0, 0, context.measureText(text).width + 16, size + 12);
  context.fillStyle = "#fff";
  context.fillText(text, 8, size + 2);
}

// A PNG of class ids (R = G = B = class id, opaque) from a class-id array.
export async function classIdPng(ids, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < ids.length; i++) {
    image.data[i * 4] = image.data[i * 4 + 1] = image.data[i * 4 + 2] = ids[i];
    image.data[i * 4 + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}
