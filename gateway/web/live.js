// Live camera: getUserMedia -> JPEG -> WebSocket /v1/models/{m}/live -> annotation drawn over the
// frame it belongs to. One frame in flight: the next is captured only when the answer came back, so
// a slow server means fewer frames, never a queue of stale ones. Frames are encoded at the model's
// input size, so the gateway forwards the JPEG to Triton as it is (clients/wire.py); the camera is
// shown at its own size and the answer, in the model's pixels, is scaled onto it.

import { apiKey } from "./api.js";
import { classIdsFromRuns, drawBoxes, drawLabel, hexToRgb } from "./draw.js";

const $ = (id) => document.getElementById(id);
const MAX_WIDTH = 640;
const WINDOW = 30; // frames for the FPS and latency figures

export function setupLive(state) {
  let session = null;
  const stop = () => {
    if (session) session.stop();
    session = null;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
  };
  state.onModelChange(stop);
  $("live-stop").addEventListener("click", stop);
  $("live-start").addEventListener("click", async () => {
    if (!state.model) return;
    state.clearError();
    $("live-start").disabled = true;
    $("live-stop").disabled = false;
    try {
      session = await startSession(state, state.model);
    } catch (error) {
      stop();
      state.showError(error);
    }
  });
}

async function startSession(state, model) {
  $("live-status").textContent = "opening the camera…";
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  const video = $("live-video");
  video.srcObject = stream;
  await video.play();
  const scale = Math.min(1, MAX_WIDTH / video.videoWidth);
  const width = Math.round(video.videoWidth * scale);
  const height = Math.round(video.videoHeight * scale);
  const display = $("live-canvas");
  display.width = width;
  display.height = height;
  const shown = new OffscreenCanvas(width, height); // the frame as shown, kept until its answer
  const shownContext = shown.getContext("2d");
  const input = model.input_size;
  const grab = new OffscreenCanvas(input.width, input.height); // the same frame at the model's size
  const grabContext = grab.getContext("2d");
  const context = display.getContext("2d", { willReadFrequently: true });

  const protocol = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${protocol}://${location.host}/v1/models/${model.name}/live`);
  socket.binaryType = "arraybuffer";
  const stats = { frames: 0, times: [], latencies: [], roundTrips: [], inferences: [], dropped: 0 };
  let sentFrame = null;
  let sentAt = 0;
  let running = true;

  const sendFrame = async () => {
    if (!running || socket.readyState !== WebSocket.OPEN) return;
    shownContext.drawImage(video, 0, 0, width, height);
    sentFrame = shown.transferToImageBitmap();
    grabContext.drawImage(sentFrame, 0, 0, input.width, input.height);
    const blob = await grab.convertToBlob({ type: "image/jpeg", quality: 0.8 });
    sentAt = performance.now();
    socket.send(await blob.arrayBuffer());
  };

  socket.addEventListener("open", () => {
    if (apiKey()) socket.send(JSON.stringify({ api_key: apiKey() }));
    $("live-status").textContent = `streaming to ${model.name}`;
    sendFrame();
  });
  socket.addEventListener("message", (event) => {
    const answer = JSON.parse(event.data);
    if (answer.error) {
      state.showError(new Error(`${answer.status ? answer.status + ": " : ""}${answer.error.message}`));
      if (answer.status) return; // refused: the server closes the socket
    } else {
      draw(context, sentFrame, answer, model);
      record(stats, answer, performance.now() - sentAt);
    }
    sendFrame();
  });
  socket.addEventListener("close", () => {
    $("live-status").textContent = "stopped";
  });

  return {
    stop() {
      running = false;
      socket.close();
      for (const track of stream.getTracks()) track.stop();
    },
  };
}

// The answer is in the pixels of the frame sent (the model's input size): scaled onto the shown one.
function draw(context, frame, answer, model) {
  const { width, height } = context.canvas;
  const [sx, sy] = [width / answer.width, height / answer.height];
  context.drawImage(frame, 0, 0);
  if (answer.task === "segmentation") {
    const ids = classIdsFromRuns(answer.mask_rle, answer.width * answer.height);
    context.imageSmoothingEnabled = false; // class edges stay sharp when scaled
    context.drawImage(maskLayer(ids, answer.width, answer.height, model.labels), 0, 0, width, height);
  } else if (answer.task === "detection") {
    const scaled = answer.detections.map((d) => ({ ...d, box: d.box.map((v, i) => v * (i % 2 ? sy : sx)) }));
    drawBoxes(context, scaled, model.labels);
  } else {
    drawLabel(context, answer, width);
  }
}

// Class colours at half opacity over a transparent background (class 0): drawn over the frame, the
// same blend as draw.js's drawMask, at any scale.
function maskLayer(ids, width, height, labels, alpha = 0.5) {
  const colours = labels.map((label) => hexToRgb(label.color));
  const image = new ImageData(width, height);
  const opacity = Math.round(alpha * 255);
  for (let i = 0; i < ids.length; i++) {
    const colour = ids[i] === 0 ? null : colours[ids[i]];
    if (!colour) continue;
    image.data[i * 4] = colour[0];
    image.data[i * 4 + 1] = colour[1];
    image.data[i * 4 + 2] = colour[2];
    image.data[i * 4 + 3] = opacity;
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d").putImageData(image, 0, 0);
  return layer;
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const keep = (list, value) => {
  list.push(value);
  if (list.length > WINDOW) list.shift();
};

function record(stats, answer, roundTripMs) {
  const now = performance.now();
  stats.frames += 1;
  keep(stats.times, now);
  keep(stats.latencies, answer.latency_ms); // in the gateway: decode, infer, encode the answer
  keep(stats.inferences, answer.inference_ms); // the Triton request alone
  keep(stats.roundTrips, roundTripMs); // in the page: JPEG sent -> answer received
  stats.dropped = answer.dropped || 0;
  const span = (stats.times.at(-1) - stats.times[0]) / 1000;
  const fps = span > 0 ? (stats.times.length - 1) / span : 0;
  $("live-frames").textContent = String(stats.frames);
  $("live-fps").textContent = fps.toFixed(1);
  $("live-latency").textContent = median(stats.roundTrips).toFixed(1);
  $("live-dropped").textContent = String(stats.dropped);
  const panel = $("live-stats");
  panel.dataset.frames = String(stats.frames);
  panel.dataset.dropped = String(stats.dropped);
  panel.dataset.fps = fps.toFixed(2);
  panel.dataset.latencyMs = median(stats.roundTrips).toFixed(2);
  panel.dataset.gatewayMs = median(stats.latencies).toFixed(2);
  panel.dataset.inferenceMs = median(stats.inferences).toFixed(2);
}
