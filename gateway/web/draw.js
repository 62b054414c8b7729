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

// Blend class colours over the canvas's pixels (background, class 0, is left as it is); `region`
// [x, y, w, h] limits it to part of the image (the mask painter redraws only what a stroke touched).
export function drawMask(context, ids, width, height, labels, alpha = 0.5, region = [0, 0, width, height]) {
  const [x0, y0, w, h] = region;
  const image = context.getImageData(x0, y0, w, h);
  const colours = labels.map((label) => hexToRgb(label.color));
  let painted = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const id = ids[(y0 + y) * width + x0 + x];
      if (id === 0 || !colours[id]) continue;
      const [r, g, b] = colours[id];
      const p = (y * w + x) * 4;
      image.data[p] = image.data[p] * (1 - alpha) + r * alpha;
      image.data[p + 1] = image.data[p + 1] * (1 - alpha) + g * alpha;
      image.data[p + 2] = image.data[p + 2] * (1 - alpha) + b * alpha;
      painted++;
    }
  }
  context.putImageData(image, x0, y0);
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

// A PNG of class ids: 8-bit greyscale, one channel, the format the gateway answers and takes back as
// a corrected mask (a canvas can only write RGBA PNGs, so the file is built here: zlib stream from
// CompressionStream("deflate"), chunks with their CRC-32).
export async function classIdPng(ids, width, height) {
  const raw = new Uint8Array(height * (width + 1)); // each row: filter type 0, then the pixels
  for (let y = 0; y < height; y++) raw.set(ids.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  const zlib = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8); // bit depth 8, colour type 0 (greyscale), deflate, no filter, no interlace
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, chunk("IHDR", header), chunk("IDAT", zlib), chunk("IEND", new Uint8Array())], {
    type: "image/png",
  });
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  let crc = 0xffffffff;
  for (let i = 4; i < 8 + data.length; i++) crc = CRC_TABLE[(crc ^ out[i]) & 255] ^ (crc >>> 8);
  view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
  return out;
}
