"""Frame reading at real video length: peak memory and time to sample 32 frames, ours vs lmms-eval.

Readers compared, each in its own subprocess (peak = that process's ``ru_maxrss``; "read" = the
peak minus the resident set just before the read, i.e. what reading the video itself added):

* ``tokbench``: ``tokbench.harness.video.read_clip`` (packet index, keyframe seeks, only sampled frames
  kept);
* ``lmms_pyav``: lmms-eval 0.7.3's ``read_video`` (``lmms_eval/models/model_utils/load_video.py``,
  its PyAV reader: decodes every frame up to the last sampled one, keeps the sampled ones);
* ``lmms_decord``: the reader of lmms-eval's ``llava_hf`` / ``llava_onevision`` models
  (``decord.VideoReader`` + ``get_batch`` over ``np.linspace(0, n - 1, k, dtype=int)``).

The video (generated once, cached under the gitignored ``.cache/``): 10 minutes, 1280x720, 30 fps
(18,000 frames), H.264 (libx264, preset ultrafast, yuv420p) with a keyframe every 250 frames (x264's
default ``keyint``, typical of real videos; no scene-cut keyframes on this synthetic content).
The frames each reader returns are compared (sha1 of the bytes) against ours: same indices, same
pixels.

    .venv/bin/python -m benchmarks.bench_video_reader --frames 32 --out .cache/bench_video_reader.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT / ".cache" / "bench_video_10min_720p.mp4"
WIDTH, HEIGHT, FPS, SECONDS, GOP = 1280, 720, 30, 600, 250
READERS = ("tokbench", "lmms_pyav", "lmms_decord")


def generate_video(path: Path, seconds: int = SECONDS) -> None:
    """A synthetic 720p clip: a scrolling gradient, a moving bar and a changing noise corner (so the
    bitrate, ~3 Mbit/s, is that of a real 720p video), encoded straight from YUV planes."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    y_base = np.tile((np.arange(WIDTH * 2) % 256).astype(np.uint8), (HEIGHT, 1))
    chroma = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(8, HEIGHT // 8, WIDTH // 8), dtype=np.uint8)  # a textured corner
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(seconds * FPS):
            shift = (index * 3) % WIDTH
            luma = y_base[:, shift : shift + WIDTH].copy()
            bar = (index * 7) % (HEIGHT - 40)
            luma[bar : bar + 40] = 255 - luma[bar : bar + 40]
            luma[: HEIGHT // 8, : WIDTH // 8] = texture[index % len(texture)]
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)


def read_with(reader: str, video: str, frames: int) -> np.ndarray:
    if reader == "tokbench":
        from tokbench.harness.video import read_clip

        return read_clip(video, frames).frames
    if reader == "lmms_pyav":
        from lmms_eval.models.model_utils.load_video import read_video

        return read_video(video, num_frm=frames, backend="pyav")
    if reader == "lmms_decord":
        from decord import VideoReader, cpu

        vr = VideoReader(video, ctx=cpu(0))
        indices = np.linspace(0, len(vr) - 1, frames, dtype=int).tolist()
        return vr.get_batch(indices).asnumpy()
    raise ValueError(reader)


def worker(reader: str, video: str, frames: int) -> dict:
    """Runs inside the subprocess: import, note the resident set, read, note the peak."""
    if reader == "tokbench":
        import tokbench.harness.video  # noqa: F401
    elif reader == "lmms_pyav":
        import lmms_eval.models.model_utils.load_video  # noqa: F401
    else:
        import decord  # noqa: F401
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    out = read_with(reader, video, frames)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "reader": reader,
        "seconds": seconds,
        "peak_mb": peak,
        "baseline_mb": before,
        "read_mb": peak - before,
        "shape": list(out.shape),
        "frame_sha1": [hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest()[:12] for f in out],
    }


def run_worker(reader: str, video: Path, frames: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", reader, "--video", str(video), "--frames", str(frames)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--worker", choices=READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.video), args.frames)))
        return
    if not args.video.is_file():
        started = time.perf_counter()
        generate_video(args.video)
        print(f"generated {args.video} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.generate_only:
        return
    results = {name: run_worker(name, args.video, args.frames) for name in args.readers.split(",")}
    ours = results["tokbench"]
    print(f"video: {args.video} ({args.video.stat().st_size / 2**20:.0f} MB); {args.frames} frames sampled")
    print(f"{'reader':12} {'seconds':>8} {'peak MB':>8} {'read MB':>8} {'same frames':>12}")
    for name, r in results.items():
        same = r["frame_sha1"] == ours["frame_sha1"]
        print(f"{name:12} {r['seconds']:8.2f} {r['peak_mb']:8.0f} {r['read_mb']:8.0f} {str(same):>12}")
    ratios = {}
    for name, r in results.items():
        if name == "tokbench":
            continue
        ratios[name] = {
            "time_ours_over_theirs": ours["seconds"] / r["seconds"],
            "peak_ours_over_theirs": ours["peak_mb"] / r["peak_mb"],
            "read_mb_ours_over_theirs": ours["read_mb"] / max(r["read_mb"], 1e-9),
        }
        print(
            f"ours / {name}: time {ratios[name]['time_ours_over_theirs']:.2f}x, peak {ratios[name]['peak_ours_over_theirs']:.2f}x, "
            f"read memory {ratios[name]['read_mb_ours_over_theirs']:.2f}x"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"video": str(args.video), "frames": args.frames, "results": results, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
