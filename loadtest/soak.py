"""``python -m loadtest.soak --minutes 30``: a long steady run against the embedded stack, watched for leaks.

1. Starts the embedded stack (real Triton + gateway on 127.0.0.1) with its own gateway data folder and
   its own TMPDIR, so the files counted are the stack's.
2. Measures capacity with a short camera ramp (``python -m loadtest.run``'s, against that stack): the
   cameras sustained at ``--fps`` (p5 FPS >= 95% of it, drops < 1%), times ``--fps``, in frames/s.
3. Runs Locust for ``--minutes``: that many cameras, each at ``--load-fraction`` (80%) of ``--fps``,
   plus a trickle of video uploads through the gateway (one every ``--upload-every-s`` per user).
4. Every ``--sample-seconds`` records, per process of the stack and of Locust (found by walking their
   process trees, named by role and model): RSS and open descriptors; the files and bytes in the
   gateway's data folder, the stack's TMPDIR and the python backend's shared-memory regions; and
   Locust's cumulative counters (frames, failures, drops, HTTP errors).
5. Stops everything by PID (also on Ctrl-C, SIGTERM or failure), checks nothing is left, and writes
   ``soak.json`` (samples + summary: each target's figure and pass/fail) and ``soak.png`` to ``--out``.

Targets: 0 failed requests; RSS growth <= 10% after warm-up (median of the last samples against the
median of the first samples after warm-up, per stack process); no growth in descriptors or files
(the last samples' median no higher than the first samples' maximum). Warm-up: the first 20% of the
run unless ``--warmup-minutes`` says otherwise. Exit code 0 when every target passes, 1 when one
fails, 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from loadtest import run as loadtest_run

LOCUSTFILE = Path(__file__).with_name("soak_locustfile.py")
RSS_GROWTH_LIMIT = 0.10
DEFAULT_WARMUP_FRACTION = 0.2
# Roles judged against the targets; Locust's own figures are recorded but say nothing about the stack.
STACK_ROLES = ("tritonserver", "python stub", "gateway")
SHM_PREFIX = "/dev/shm/"
# Locust's counters (soak_locustfile.progress_line) that are failed requests.
FAILURE_COUNTERS = ("camera_failures", "http_errors", "upload_job_failures", "user_exceptions")


class SoakError(RuntimeError):
    """The soak could not run (the stack, the ramp or Locust failed); the message says why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES", "30")),
        help="length of the steady load (default: $SOAK_MINUTES or 30)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="soak.json, soak.png")
    parser.add_argument("--work", type=Path, default=Path("out/soak"), help="logs, ramp, stack folders")
    parser.add_argument("--model", default="shelf_segmenter", help="the model cameras stream to")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 20%% of the run")
    parser.add_argument("--fps", type=float, default=30.0, help="camera FPS the capacity is measured at")
    parser.add_argument("--window", type=int, default=2, help="requests in flight per camera")
    parser.add_argument("--load-fraction", type=float, default=0.8, help="share of capacity to run at")
    parser.add_argument("--ramp-steps", default="1,2,3,4,6", help="cameras per step of the capacity ramp")
    parser.add_argument("--ramp-step-seconds", type=float, default=10.0)
    parser.add_argument(
        "--cameras",
        type=int,
        default=0,
        help="skip the ramp: this many cameras at --fps x --load-fraction each",
    )
    parser.add_argument("--upload-users", type=int, default=1)
    parser.add_argument("--upload-every-s", type=float, default=20.0, help="one upload per user every N s")
    parser.add_argument(
        "--locust-arg",
        action="append",
        default=shlex.split(os.environ.get("SOAK_LOCUST_ARGS", "")),
        help="extra option for the soak's Locust run (repeatable; also $SOAK_LOCUST_ARGS), "
        "e.g. --locust-arg=--camera-window=3",
    )
    return parser.parse_args(argv)


# --- the load -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    cameras: int
    camera_fps: float
    chosen_by: str
    capacity_frames_per_s: float | None = None


def plan_from_ramp(report: dict, load_fraction: float) -> LoadPlan:
    """The soak's cameras from a ``loadtest.run`` ramp report: as many cameras as it sustained at its
    FPS, each slowed to ``load_fraction`` of that FPS (so ``load_fraction`` of the sustained frames/s)."""
    fps = report["camera_fps_target"]
    sustained = report["users_sustained_at_target"]
    largest_step = max(step["users"] for step in report["steps"])
    if sustained:
        capacity = sustained * fps
        cameras = sustained
        how = f"{sustained} camera(s) sustained {fps:g} FPS each (p5 FPS >= 95%, drops < 1%) in the ramp"
        if sustained == largest_step:
            how += "; the ramp never saturated, so capacity is at least this"
    else:  # even one camera could not keep up: one camera at a share of what the server did deliver
        capacity = max(step["frames_per_s_total"] or 0.0 for step in report["steps"])
        cameras = 1
        how = f"no ramp step sustained {fps:g} FPS: capacity = the most frames/s any step got"
    if capacity <= 0:
        raise SoakError("the capacity ramp segmented no frame")
    per_camera = round(capacity * load_fraction / cameras, 2)
    return LoadPlan(cameras, per_camera, how + f"; soak at {load_fraction:.0%} of it", round(capacity, 2))


def measure_capacity(args: argparse.Namespace, gateway_url: str, triton) -> LoadPlan:
    if args.cameras:
        return LoadPlan(
            args.cameras,
            round(args.fps * args.load_fraction, 2),
            "given (--cameras, --fps x --load-fraction)",
        )
    ramp = args.work / "ramp"
    code = loadtest_run.main(
        [
            "--host", gateway_url,
            "--triton-grpc", triton.grpc_url,
            "--triton-metrics", triton.metrics_url,
            "--model", args.model,
            "--steps", args.ramp_steps,
            "--step-seconds", str(args.ramp_step_seconds),
            "--fps", str(args.fps),
            "--window", str(args.window),
            "--out", str(ramp),
        ]
    )  # fmt: skip
    if code != 0:
        raise SoakError(f"the capacity ramp failed (exit {code}); see {ramp}")
    return plan_from_ramp(json.loads((ramp / "report.json").read_text()), args.load_fraction)


def locust_command(
    args: argparse.Namespace, plan: LoadPlan, gateway_url: str, triton, video: Path
) -> list[str]:
    seconds = args.minutes * 60
    users = ["CameraUser"] + (["UploadUser"] if args.upload_users else [])
    locust = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", gateway_url,
        "--triton-grpc", triton.grpc_url,
        "--triton-metrics", triton.metrics_url,
        "--model", args.model,
        "--steps", str(plan.cameras),  # one step: a steady load for the whole run
        "--step-seconds", str(seconds),
        "--camera-fps", str(plan.camera_fps),
        "--camera-window", str(args.window),
        "--upload-users", str(args.upload_users),
        "--upload-video", str(video),
        "--upload-every-s", str(args.upload_every_s),
        "--progress-file", str(args.work / "progress.jsonl"),
        "--report", str(args.work / "report.json"),
        "--json-file", str(args.work / "locust_stats"),
        "--only-summary",
        "--stop-timeout", "10",
        "--exit-code-on-error", "0",
        *args.locust_arg,
        *users,
    ]  # fmt: skip
    # Locust can hang at exit (an unclosed gRPC channel): a hard limit kills it whatever it does, and
    # setpriv makes the kernel kill it if that guard dies (the guard itself dies with this process).
    guard = ["timeout", "-s", "KILL", str(int(seconds + 120))]
    if shutil.which("setpriv"):
        guard += ["setpriv", "--pdeathsig", "KILL"]
    return guard + locust


# --- sampling ---------------------------------------------------------------------------------------------


def role_of(cmdline: list[str]) -> tuple[str, str | None]:
    """(role, model) of a process of the stack or of Locust, from its command line."""
    program = Path(cmdline[0]).name if cmdline else ""
    if program == "tritonserver":
        return "tritonserver", None
    if program == "triton_python_backend_stub":  # argv[1]: <repository>/<model>/<version>/model.py
        model_file = Path(cmdline[1])
        return "python stub", f"{model_file.parent.parent.name}/{model_file.parent.name}"
    if program == "timeout":  # before "-m": its command line carries Locust's
        return "locust guard", None
    if "-m" in cmdline and cmdline.index("-m") + 1 < len(cmdline):
        module = cmdline[cmdline.index("-m") + 1]
        if module in ("gateway", "locust"):
            return module, None
    return program or "unknown", None


@dataclass
class ProcessSampler:
    """RSS and descriptors of every process under ``roots`` (pids), each named once by role and model:
    ``python stub shelf_segmenter/1 #2``. A process that replaces one (a restart) gets a new name."""

    roots: list[int]
    processes: dict[str, dict] = field(default_factory=dict)  # name -> {pid, role, model}
    _names: dict[int, str] = field(default_factory=dict)

    def _name(self, process: psutil.Process) -> str:
        if process.pid not in self._names:
            role, model = role_of(process.cmdline())
            base = f"{role} {model}" if model else role
            same = sum(1 for info in self.processes.values() if info["base"] == base)
            name = f"{base} #{same + 1}" if role == "python stub" or same else base
            self._names[process.pid] = name
            self.processes[name] = {"pid": process.pid, "role": role, "model": model, "base": base}
        return self._names[process.pid]

    def sample(self) -> dict[str, dict]:
        figures = {}
        for root in self.roots:
            try:
                tree = psutil.Process(root)
                members = [tree, *tree.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in members:
                try:
                    with process.oneshot():
                        if process.status() == psutil.STATUS_ZOMBIE:
                            continue
                        figures[self._name(process)] = {
                            "rss_mb": round(process.memory_info().rss / 2**20, 2),
                            "fds": process.num_fds(),
                        }
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # exited between the walk and the reading
        return figures

    def pids(self) -> list[int]:
        return [info["pid"] for info in self.processes.values()]


def file_sizes(folder: Path) -> list[tuple[str, int]]:
    """(path relative to ``folder``, bytes) of every file under it, any depth; none if it is missing."""
    sizes = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            try:
                sizes.append((os.path.relpath(path, folder), os.lstat(path).st_size))
            except FileNotFoundError:  # removed while we walked
                pass
    return sizes


def folder_usage(folder: Path) -> dict[str, int]:
    sizes = file_sizes(folder)
    return {"files": len(sizes), "bytes": sum(size for _, size in sizes)}


def largest_files(folder: Path, count: int = 5) -> list[tuple[str, int]]:
    """The biggest files under ``folder``: what a growing byte count is made of."""
    return sorted(file_sizes(folder), key=lambda item: -item[1])[:count]


def shared_memory_regions(pids: list[int]) -> set[str]:
    """The /dev/shm files these processes have mapped (the python backend's regions, one per stub)."""
    regions = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    if SHM_PREFIX in line:
                        regions.add(line[line.index(SHM_PREFIX) :].strip().removesuffix(" (deleted)"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return regions


def regions_usage(regions: set[str]) -> dict[str, int]:
    sizes = [os.stat(path).st_size for path in regions if os.path.exists(path)]
    return {"files": len(sizes), "bytes": sum(sizes)}


def read_progress(path: Path) -> dict:
    """Locust's latest cumulative counters (the last line of its progress file), or {} before the first."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
    return {}


@dataclass
class Sampler:
    processes: ProcessSampler
    folders: dict[str, Path]  # name -> folder whose files are counted
    progress_file: Path
    stack_pids: list[int]  # the servers whose shared-memory regions are counted
    started: float = field(default_factory=time.monotonic)

    def sample(self) -> dict:
        processes = self.processes.sample()
        temp = {name: folder_usage(folder) for name, folder in self.folders.items()}
        stack_tree = self.stack_pids + [
            info["pid"] for info in self.processes.processes.values() if info["role"] == "python stub"
        ]
        temp["python backend shm"] = regions_usage(shared_memory_regions(stack_tree))
        load = {k: v for k, v in read_progress(self.progress_file).items() if k != "errors"}
        return {
            "t_s": round(time.monotonic() - self.started, 1),
            "time": round(time.time(), 1),
            "processes": processes,
            "temp": temp,
            "load": load,
        }


def sample_until_done(sampler: Sampler, locust: subprocess.Popen, seconds: float, every_s: float) -> tuple:
    """Sample every ``every_s`` until Locust exits (or overstays by a minute). Ctrl-C ends the sampling
    early (the samples so far are kept, the run is marked interrupted); the caller stops everything."""
    samples: list[dict] = []
    deadline = time.monotonic() + seconds + 60
    next_sample = time.monotonic()
    try:
        while locust.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= next_sample:
                samples.append(sampler.sample())
                next_sample += every_s
                if len(samples) % max(1, round(60 / every_s)) == 1:
                    print_progress(samples[-1])
            time.sleep(0.5)
    except KeyboardInterrupt:
        return samples, "interrupted (Ctrl-C)"
    if locust.poll() is None:
        return samples, "Locust overstayed its time and was stopped"
    return samples, None


def print_progress(sample: dict) -> None:
    load = sample["load"]
    rss = ", ".join(
        f"{name} {figures['rss_mb']:.0f}" for name, figures in sample["processes"].items() if "#" not in name
    )
    print(
        f"[soak {sample['t_s'] / 60:5.1f} min] frames {load.get('camera_frames', 0)}, "
        f"failures {failed_requests(load)}, drops {load.get('dropped_frames', 0)}, "
        f"uploads {load.get('upload_jobs', 0)}; RSS MB: {rss}",
        file=sys.stderr,
    )


# --- the verdict ----------------------------------------------------------------------------------------


def failed_requests(load: dict) -> int:
    return sum(load.get(key, 0) for key in FAILURE_COUNTERS)


def compared_windows(values: list[float]) -> tuple[list[float], list[float]]:
    """The first and the last samples after warm-up that are compared: a tenth of them each, at least
    three (30 s at the default rate) when there are enough, never more than half."""
    size = max(1, min(len(values) // 2, max(3, round(len(values) / 10))))
    return values[:size], values[-size:]


def growth(series: list[tuple[float, float]], warmup_s: float) -> dict | None:
    """How a figure moved after warm-up: the median of the last window against the first one.
    None when fewer than two samples come after warm-up."""
    after = [value for t, value in series if t >= warmup_s]
    if len(after) < 2:
        return None
    first, last = compared_windows(after)
    start, end = statistics.median(first), statistics.median(last)
    return {
        "start": round(start, 2),
        "start_max": round(max(first), 2),
        "end": round(end, 2),
        "growth": round((end - start) / start, 4) if start else None,
        "samples": len(after),
    }


def rss_verdict(moved: dict | None) -> bool | None:
    if moved is None:
        return None
    return moved["growth"] is not None and moved["growth"] <= RSS_GROWTH_LIMIT


def count_verdict(moved: dict | None) -> bool | None:
    """No growth: the last window's median is no higher than the highest the first window saw."""
    return None if moved is None else moved["end"] <= moved["start_max"]


def series(samples: list[dict], section: str, name: str, figure: str) -> list[tuple[float, float]]:
    return [(s["t_s"], s[section][name][figure]) for s in samples if name in s[section]]


def summarise(samples: list[dict], processes: dict[str, dict], warmup_s: float, final_load: dict) -> dict:
    """Each target's figure and pass/fail. A target without enough samples after warm-up fails."""
    rss, fds, locust = {}, {}, {}
    for name, info in processes.items():
        rss_moved = growth(series(samples, "processes", name, "rss_mb"), warmup_s)
        fds_moved = growth(series(samples, "processes", name, "fds"), warmup_s)
        entry_rss = {"pid": info["pid"], **(rss_moved or {}), "pass": rss_verdict(rss_moved)}
        entry_fds = {"pid": info["pid"], **(fds_moved or {}), "pass": count_verdict(fds_moved)}
        if info["role"] in STACK_ROLES:
            rss[name], fds[name] = entry_rss, entry_fds
        else:
            locust[name] = {"rss": entry_rss, "fds": entry_fds}
    files = {}
    for location in samples[0]["temp"] if samples else []:
        count_moved = growth(series(samples, "temp", location, "files"), warmup_s)
        bytes_moved = growth(series(samples, "temp", location, "bytes"), warmup_s)
        files[location] = {
            "files": count_moved,
            "bytes": bytes_moved,
            "pass": count_verdict(count_moved) is True and count_verdict(bytes_moved) is True,
        }

    def all_pass(entries: dict) -> bool:
        return bool(entries) and all(entry["pass"] is True for entry in entries.values())

    after = [s for s in samples if s["t_s"] >= warmup_s]
    stack_names = {name for name, info in processes.items() if info["role"] in STACK_ROLES}
    present = [stack_names & set(s["processes"]) for s in after]
    failed = failed_requests(final_load)
    worst = max(rss.items(), key=lambda item: item[1].get("growth") or 0.0, default=(None, {}))
    offered = final_load.get("camera_frames", 0) + final_load.get("dropped_frames", 0)
    targets = {
        "zero_failed_requests": {
            "figure": failed,
            "limit": 0,
            "pass": bool(final_load) and failed == 0,
            "detail": {key: final_load.get(key, 0) for key in FAILURE_COUNTERS},
        },
        "rss_growth_after_warmup": {
            "figure": worst[1].get("growth"),
            "worst_process": worst[0],
            "limit": RSS_GROWTH_LIMIT,
            "pass": all_pass(rss),
            "per_process": rss,
        },
        "no_descriptor_growth": {"pass": all_pass(fds), "per_process": fds},
        "no_temp_file_growth": {"pass": all_pass(files), "per_location": files},
        # A stack process that died or was replaced during the run is a failure of its own.
        "same_stack_processes_throughout": {
            "figure": sorted(stack_names - set.intersection(*present)) if present else None,
            "pass": bool(present) and all(names == stack_names for names in present),
        },
    }
    return {
        "warmup_s": warmup_s,
        "samples_after_warmup": len(after),
        "targets": targets,
        "pass": all(target["pass"] for target in targets.values()),
        "load_totals": final_load,
        "drop_rate": round(final_load.get("dropped_frames", 0) / offered, 4) if offered else None,
        "load_generator": locust,  # recorded, not judged: Locust keeps every latency for its report
    }


# --- leftovers, output ---------------------------------------------------------------------------------


def leftovers(pids: list[int], regions: set[str]) -> dict[str, list]:
    """What is still there after the stop: processes (not zombies) and shared-memory files."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return {"processes": alive, "shm_regions": sorted(path for path in regions if os.path.exists(path))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = lambda points: [t / 60 for t, _ in points]  # noqa: E731
    values = lambda points: [v for _, v in points]  # noqa: E731
    figure, (rss_axis, fds_axis, files_axis, load_axis) = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    colours = plt.get_cmap("tab20").colors  # a dozen processes: the default cycle repeats after ten
    for index, name in enumerate(result["processes"]):
        for axis, figure_name in ((rss_axis, "rss_mb"), (fds_axis, "fds")):
            points = series(samples, "processes", name, figure_name)
            colour = colours[index % len(colours)]
            axis.plot(minutes(points), values(points), label=name, linewidth=1, color=colour)
    rss_axis.set_ylabel("RSS (MB)")
    fds_axis.set_ylabel("open descriptors")
    rss_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bytes_axis = files_axis.twinx()
    for location in samples[0]["temp"] if samples else []:
        count = series(samples, "temp", location, "files")
        size = series(samples, "temp", location, "bytes")
        (line,) = files_axis.plot(minutes(count), values(count), label=f"{location} (files)")
        bytes_axis.plot(
            minutes(size), [v / 2**20 for v in values(size)], "--", color=line.get_color(), label="MB"
        )
    files_axis.set_ylabel("files (solid)")
    bytes_axis.set_yscale("symlog", linthresh=0.1)  # a 0.5 MB database beside 30 MB of shared memory
    bytes_axis.set_ylabel("MB (dashed, log above 0.1)")
    files_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    errors_axis = load_axis.twinx()
    rates = load_rates(samples)
    for key, label in (("camera_frames", "camera frames/s"), ("dropped_frames", "dropped frames/s"),
                       ("http_requests", "gateway HTTP requests/s")):  # fmt: skip
        load_axis.plot([t / 60 for t in rates["t_s"]], rates[key], label=label, linewidth=1)
    failures = [(s["t_s"], failed_requests(s["load"])) for s in samples]
    errors_axis.plot(minutes(failures), values(failures), color="tab:red", label="failed requests (total)")
    load_axis.set_ylabel("per second")
    errors_axis.set_ylabel("failed requests (cumulative)", color="tab:red")
    errors_axis.set_ylim(0, max([1, *values(failures)]) * 1.1)
    load_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    load_axis.set_xlabel("minutes into the soak")
    for axis in (rss_axis, fds_axis, files_axis, load_axis):
        axis.axvspan(0, result["summary"]["warmup_s"] / 60, color="grey", alpha=0.12)
    verdict = "PASS" if result["summary"]["pass"] else "FAIL"
    rss_axis.set_title(f"soak: {result['config']['minutes']:g} min, warm-up shaded; {verdict}")
    figure.tight_layout()
    figure.savefig(path, dpi=90, bbox_inches="tight")  # keeps the legends beside the axes
    plt.close(figure)


def load_rates(samples: list[dict]) -> dict[str, list[float]]:
    """Per-second rates of Locust's cumulative counters between consecutive samples."""
    keys = ("camera_frames", "dropped_frames", "http_requests")
    rates: dict[str, list[float]] = {"t_s": [], **{key: [] for key in keys}}
    for before, after in zip(samples, samples[1:], strict=False):
        seconds = after["t_s"] - before["t_s"]
        if seconds <= 0 or not after["load"]:
            continue
        rates["t_s"].append(after["t_s"])
        for key in keys:
            rates[key].append((after["load"].get(key, 0) - before["load"].get(key, 0)) / seconds)
    return rates


def print_summary(summary: dict, leftover: dict) -> None:
    for name, target in summary["targets"].items():
        figure = f": {target['figure']}" if "figure" in target else ""
        print(f"{'PASS' if target['pass'] else 'FAIL'}  {name}{figure}")
    print(f"drop rate: {summary['drop_rate']}; load: {summary['load_totals']}")
    print(f"left after the stop: {leftover}")


# --- the run ----------------------------------------------------------------------------------------------


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the children started inside (the stack copies os.environ)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: everything started is stopped by PID


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = soak(args)
    except SoakError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the load started; what was started is stopped already
        print("interrupted", file=sys.stderr)
        return 130
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "soak.png")
    print_summary(result["summary"], result["leftovers"])
    if result["stopped_early"]:
        print(f"stopped early: {result['stopped_early']}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}", file=sys.stderr)
    clean = not any(result["leftovers"].values()) and result["stopped_early"] is None
    return 0 if result["summary"]["pass"] and clean else 1


def soak(args: argparse.Namespace) -> dict:
    from datagen.shelves import write_pan_video
    from prodseg.processes import StartError, start_child, stop_process_group
    from prodseg.stack import EmbeddedStack
    from prodseg.triton_server import TritonServer

    shutil.rmtree(args.work, ignore_errors=True)
    folders = {"gateway data": args.work / "gateway-data", "stack TMPDIR": args.work / "tmp"}
    for folder in folders.values():
        folder.mkdir(parents=True)
    warmup_s = (
        args.warmup_minutes * 60
        if args.warmup_minutes is not None
        else DEFAULT_WARMUP_FRACTION * args.minutes * 60
    )
    with ExitStack() as stack:
        embedded = EmbeddedStack(
            triton=TritonServer(log_path=args.work / "triton.log"), gateway_data_dir=folders["gateway data"]
        )
        try:
            with environment(TMPDIR=str(folders["stack TMPDIR"].resolve())):
                embedded.start()  # stops what it started if it fails half-way
        except StartError as error:
            raise SoakError(f"the embedded stack did not start: {error}") from error
        stack.callback(embedded.stop)
        gateway, triton = embedded.gateway, embedded.triton
        print(f"embedded stack: gateway {gateway.url}, Triton {triton.grpc_url}", file=sys.stderr)
        models_loaded = loaded_models(triton.http_url)
        # glibc's arenas decide whether freed memory shows in RSS (prodseg/stack.py GATEWAY_MALLOC_ENV).
        malloc_arena_max = {
            role: psutil.Process(pid).environ().get("MALLOC_ARENA_MAX", "glibc default")
            for role, pid in (("tritonserver", triton.process.pid), ("gateway", gateway.process.pid))
        }

        plan = measure_capacity(args, gateway.url, triton)
        print(
            f"soak load: {plan.cameras} camera(s) at {plan.camera_fps} FPS; {plan.chosen_by}", file=sys.stderr
        )
        video = args.work / "upload.mp4"
        write_pan_video(video, args.work / "upload_masks.zip", seed=5, num_frames=60)

        command = locust_command(args, plan, gateway.url, triton, video)
        locust = start_child(command, args.work / "locust.log")
        stack.callback(stop_process_group, locust, 15)
        processes = ProcessSampler([triton.process.pid, gateway.process.pid, locust.pid])
        sampler = Sampler(
            processes, folders, args.work / "progress.jsonl", [triton.process.pid, gateway.process.pid]
        )
        samples, stopped_early = sample_until_done(sampler, locust, args.minutes * 60, args.sample_seconds)
        regions = shared_memory_regions(processes.pids())
        # Before the stop (which removes e.g. SQLite's WAL): what the byte counts were made of.
        largest = {name: largest_files(folder) for name, folder in folders.items()}
        largest["python backend shm"] = sorted(
            ((path, os.stat(path).st_size) for path in regions if os.path.exists(path)), key=lambda r: -r[1]
        )
    # Everything is stopped here (ExitStack): now check nothing is left behind.
    leftover = leftovers(processes.pids(), regions)
    final_load = read_progress(args.work / "progress.jsonl")
    errors = final_load.pop("errors", {})
    final_load.pop("time", None)
    if not final_load and not stopped_early:
        raise SoakError(f"Locust reported nothing (exit {locust.returncode}); see {args.work / 'locust.log'}")
    for info in processes.processes.values():
        info.pop("base")
    return {
        "what": "a steady mixed camera and upload load against the embedded stack, watched for leaks",
        "config": {
            "minutes": args.minutes,
            "sample_seconds": args.sample_seconds,
            "warmup": f"the first {warmup_s:.0f} s of the load "
            + ("(--warmup-minutes)" if args.warmup_minutes is not None else "(20% of the run)"),
            "model": args.model,
            "camera_window": args.window,
            "upload_users": args.upload_users,
            "upload_every_s": args.upload_every_s,
            "upload_video_frames": 60,
            "locust_args": args.locust_arg,
            "folders": {name: str(folder) for name, folder in folders.items()},
            "models_loaded": models_loaded,
            "malloc_arena_max": malloc_arena_max,
        },
        "load_plan": asdict(plan) | {"load_fraction": args.load_fraction, "ramp_fps": args.fps},
        "camera_report": _camera_report(args.work / "report.json"),
        "stopped_early": stopped_early,
        "locust_exit_code": locust.returncode,
        "processes": processes.processes,
        "summary": summarise(samples, processes.processes, warmup_s, final_load),
        "largest_files_before_stop": largest,
        "leftovers": leftover,
        "errors": errors,
        "samples": samples,
    }


def loaded_models(triton_http: str) -> list[str]:
    """``name/version`` of every model Triton has ready (its repository index: helpers included)."""
    index = httpx.post(f"http://{triton_http}/v2/repository/index", json={"ready": True}, timeout=10)
    index.raise_for_status()
    return sorted(f"{model['name']}/{model.get('version', '')}" for model in index.json())


def _camera_report(path: Path) -> dict | None:
    """The camera figures of the whole soak (FPS per camera, drops, latency) from Locust's report."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return {"steps": report["steps"], "triton": report.get("triton")}


if __name__ == "__main__":
    sys.exit(main())
