"""SynthVQA generator: deterministic synthetic videos with 4-way multiple-choice questions.

A sample is ``num_frames`` (default 16) RGB frames of ``size`` x ``size`` pixels (default 112)
showing simple shapes (square, circle, triangle, cross) in six well-separated hues on a
muted, static background (smooth gradient plus mild luminance noise). Each question family
targets information a visual-token reducer may throw away:

- ``static``: colour or shape of one large object present in every frame (the control:
  redundant in space and time, every reducer should keep it);
- ``small_object``: colour of one 8-16 px object (about one 16 px pooled token) on a
  patch-scale textured background (fine spatial detail);
- ``motion``: direction (left/right/up/down) in which an object moves;
- ``order``: colour of the first of two or three objects that appear at different frames and
  stay (all of them are options, so a model blind to time is at 1/2 or 1/3, not 1/4);
- ``counting``: how many times (1-4) an object flashes: each flash is one frame, with at least
  two frames off between flashes;
- ``needle``: colour of the only object in the video, visible in only 1-2 frames (frames
  without it show nothing but background, so a reducer that drops them leaves the model at
  chance). Its shape is not asked: at 16-24 px it falls within one or two 16 px tokens of the
  7x7 grid, and a tiny model fine-tuned on such needles named it no better than chance (23% of
  109 val questions) while naming its colour 96% of the time (91 questions).

Everything derives from one seed per sample through ``numpy.random.Generator``. A split is a
fixed base seed plus the sample index (disjoint seed ranges per split), with families in
round-robin order and the correct letter cycling A-D within each family, so a split of
``24 * k`` samples is exactly balanced in both. Sizes are given for 112 px frames and scale
with ``size``. Videos are H.264 (libx264, yuv444p, CRF 10, one encoder thread) in mp4 at 8 fps;
every written video is decoded back and checked. Regenerating a split reproduces its records
exactly and its frames to within the encoder's rounding (the bytes matched on our machine,
but not on every CI machine).

CLI: ``python -m tokbench.tasks.synthvqa.generate --out DIR --split test --count N``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FAMILIES = ("static", "small_object", "motion", "order", "counting", "needle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (230, 210, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (170, 60, 200),
}
SHAPES = ("square", "circle", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
COUNTS = ("1", "2", "3", "4")
LETTERS = "ABCD"

SPLIT_SEEDS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
DEFAULT_COUNTS = {"train": 12_000, "val": 120, "test": 240}
DATA_DIR = Path(__file__).resolve().parent / "data"

MIN_FRAMES = 10  # counting: up to 4 one-frame flashes with 2-frame gaps
REFERENCE_SIZE = 112  # pixel sizes below are for this frame size and scale with ``size``
MARGIN = 4  # px kept free at the frame border and between objects
FPS = 8
CODEC = "libx264"
CRF = 10
PIX_FMT = "yuv444p"  # full-resolution chroma keeps 8 px objects' colour (4:2:0 smears it)


@dataclass(frozen=True)
class SampleSpec:
    """What identifies one sample of a split: index, seed, family and the correct option's slot."""

    index: int
    seed: int
    family: str
    answer_index: int


@dataclass(frozen=True)
class Sample:
    """A rendered sample: frames [T, H, W, 3] uint8 and a question with 4 options (one correct).

    ``evidence_frames`` are the frames in which the queried object is visible. ``layout``
    [T, H, W] uint8 says which object painted each pixel (0: background, ``i + 1``: object
    ``i``, the queried one being object 0) and ``objects`` gives each object's (shape, colour):
    ground truth a trainer can supervise intermediate features with.
    """

    seed: int
    family: str
    frames: np.ndarray
    question: str
    options: list[str]
    answer: str
    evidence_frames: tuple[int, ...]
    layout: np.ndarray
    objects: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Sprite:
    """A shape painted with its top-left corner at ``positions[t]`` ([T, 2] y, x) where ``visible[t]``."""

    shape: str
    colour: str
    size: int
    positions: np.ndarray
    visible: np.ndarray


@dataclass(frozen=True)
class _Scene:
    """A family's content: sprites (the queried one first), question, answer and option pool."""

    sprites: list[_Sprite]
    question: str
    correct: str
    pool: Sequence[str]
    must_include: tuple[str, ...] = ()


# --- sampling helpers ---------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _pick_distinct(rng: np.random.Generator, items: Sequence[str], k: int) -> list[str]:
    return [items[int(i)] for i in rng.permutation(len(items))[:k]]


def _px(rng: np.random.Generator, low: int, high: int, size: int) -> int:
    """A length drawn from [low, high] px at the reference frame size, scaled to ``size``."""
    return max(1, round(int(rng.integers(low, high + 1)) * size / REFERENCE_SIZE))


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two (y, x, side) squares are at least MARGIN px apart on some axis."""
    (ya, xa, sa), (yb, xb, sb) = a, b
    return ya + sa + MARGIN <= yb or yb + sb + MARGIN <= ya or xa + sa + MARGIN <= xb or xb + sb + MARGIN <= xa


def _place(rng: np.random.Generator, sides: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping squares of the given sides (rejection sampling)."""
    boxes: list[tuple[int, int, int]] = []
    for side in sides:
        for _ in range(1000):
            y, x = (int(v) for v in rng.integers(MARGIN, size - MARGIN - side + 1, size=2))
            if all(_apart((y, x, side), box) for box in boxes):
                boxes.append((y, x, side))
                break
        else:
            raise RuntimeError(f"cannot place objects of sides {list(sides)} in a {size} px frame")
    return [(y, x) for y, x, _ in boxes]


def _fixed_sprite(shape: str, colour: str, side: int, corner: tuple[int, int], visible: np.ndarray) -> _Sprite:
    positions = np.tile(np.array(corner, dtype=np.int64), (len(visible), 1))
    return _Sprite(shape, colour, side, positions, visible)


# --- families -----------------------------------------------------------------------------


def _static_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    shape, colour, side = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _px(rng, 36, 56, size)
    sprite = _fixed_sprite(shape, colour, side, _place(rng, [side], size)[0], np.ones(num_frames, bool))
    if rng.random() < 0.5:
        return _Scene([sprite], "What colour is the large object?", colour, tuple(COLOURS))
    return _Scene([sprite], "What shape is the large object?", shape, SHAPES)


def _small_object_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    shape, colour, side = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _px(rng, 8, 16, size)
    sprite = _fixed_sprite(shape, colour, side, _place(rng, [side], size)[0], np.ones(num_frames, bool))
    return _Scene([sprite], "What colour is the small object?", colour, tuple(COLOURS))


def _motion_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    shape, colour, direction = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _pick(rng, DIRECTIONS)
    side, distance = _px(rng, 12, 20, size), _px(rng, 40, 64, size)
    last = size - MARGIN - side
    start = int(rng.integers(MARGIN, last - distance + 1))
    across = np.full(num_frames, int(rng.integers(MARGIN, last + 1)))
    steps = np.rint(np.linspace(0, distance, num_frames)).astype(np.int64)
    along = start + steps if direction in ("right", "down") else start + distance - steps
    yx = (across, along) if direction in ("left", "right") else (along, across)
    sprite = _Sprite(shape, colour, side, np.stack(yx, axis=1), np.ones(num_frames, bool))
    return _Scene([sprite], f"In which direction does the {colour} {shape} move?", direction, DIRECTIONS)


def _order_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    count = int(rng.integers(2, 4))
    colours = _pick_distinct(rng, tuple(COLOURS), count)
    sides = [_px(rng, 14, 22, size) for _ in range(count)]
    first = int(rng.integers(0, num_frames // 6 + 1))
    gaps = rng.integers(num_frames // 5, num_frames // 4 + 1, size=count - 1)
    starts = first + np.concatenate([[0], np.cumsum(gaps)])
    frames = np.arange(num_frames)
    sprites = [
        _fixed_sprite(_pick(rng, SHAPES), colour, side, corner, frames >= start)
        for colour, side, corner, start in zip(colours, sides, _place(rng, sides, size), starts, strict=True)
    ]
    question = "What colour is the object that appears first?"
    return _Scene(sprites, question, colours[0], tuple(COLOURS), tuple(colours[1:]))


def _flash_schedule(rng: np.random.Generator, flashes: int, num_frames: int) -> np.ndarray:
    """Visibility [T] with ``flashes`` single frames on, separated by at least 2 off frames."""
    slack = num_frames - flashes - 2 * (flashes - 1)
    extra = rng.multinomial(slack, np.full(flashes + 1, 1 / (flashes + 1)))
    visible = np.zeros(num_frames, bool)
    t = int(extra[0])
    for gap in extra[1:-1]:
        visible[t] = True
        t += 3 + int(gap)
    visible[t] = True
    return visible


def _counting_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    shape, colour, side = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _px(rng, 16, 24, size)
    flashes = int(rng.integers(1, 5))
    visible = _flash_schedule(rng, flashes, num_frames)
    sprite = _fixed_sprite(shape, colour, side, _place(rng, [side], size)[0], visible)
    return _Scene([sprite], f"How many times does the {colour} {shape} flash?", str(flashes), COUNTS)


def _needle_scene(rng: np.random.Generator, num_frames: int, size: int) -> _Scene:
    colour, side = _pick(rng, tuple(COLOURS)), _px(rng, 16, 24, size)
    length = int(rng.integers(1, 3))
    start = int(rng.integers(1, num_frames - length))
    frames = np.arange(num_frames)
    visible = (frames >= start) & (frames < start + length)
    sprite = _fixed_sprite(_pick(rng, SHAPES), colour, side, _place(rng, [side], size)[0], visible)
    return _Scene([sprite], "One object appears only briefly. What colour is it?", colour, tuple(COLOURS))


_SCENES = {
    "static": _static_scene,
    "small_object": _small_object_scene,
    "motion": _motion_scene,
    "order": _order_scene,
    "counting": _counting_scene,
    "needle": _needle_scene,
}


# --- pixels -------------------------------------------------------------------------------


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of a shape filling its square."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    centre = (side - 1) / 2
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        return (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2) ** 2
    if shape == "triangle":  # apex up, base along the bottom row
        return np.abs(xx - centre) <= (yy + 1) / 2
    if shape == "cross":  # a plus sign with arms one third of the side thick
        arm = max(side / 6, 0.5)
        return (np.abs(xx - centre) <= arm) | (np.abs(yy - centre) <= arm)
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int, textured: bool) -> np.ndarray:
    """A muted gradient between two grey tints with mild luminance noise (and a grating if textured)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    ends = rng.uniform(70, 170, size=(2, 1)) + rng.uniform(-15, 15, size=(2, 3))
    image = ends[0] * (1 - ramp[..., None]) + ends[1] * ramp[..., None]
    luminance = rng.normal(0, 3, size=(size, size))
    if textured:
        period, theta, phase = rng.uniform(6, 14), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period + phase
        luminance += rng.uniform(10, 20) * np.sin(wave)
    return np.clip(np.rint(image + luminance[..., None]), 0, 255).astype(np.uint8)


def _render(sprites: Sequence[_Sprite], background: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] and the layout [T, H, W] (0 background, i + 1 where sprite i is painted)."""
    frames = np.repeat(background[None], num_frames, axis=0)
    layout = np.zeros(frames.shape[:3], np.uint8)
    for index, sprite in enumerate(sprites):
        mask = _shape_mask(sprite.shape, sprite.size)
        colour = np.array(COLOURS[sprite.colour], dtype=np.uint8)
        for t in np.flatnonzero(sprite.visible):
            y, x = (int(v) for v in sprite.positions[t])
            frames[t, y : y + sprite.size, x : x + sprite.size][mask] = colour
            layout[t, y : y + sprite.size, x : x + sprite.size][mask] = index + 1
    return frames, layout


def _options(rng: np.random.Generator, scene: _Scene, answer_index: int) -> list[str]:
    """Four distinct options: the correct one at ``answer_index``, the scene's must-includes, random fill."""
    others = [o for o in scene.pool if o != scene.correct and o not in scene.must_include]
    fill = [others[int(i)] for i in rng.permutation(len(others))[: 3 - len(scene.must_include)]]
    distractors = list(scene.must_include) + fill
    options = [distractors[int(i)] for i in rng.permutation(3)]
    options.insert(answer_index, scene.correct)
    return options


# --- public API ---------------------------------------------------------------------------


def render_sample(
    seed: int, family: str, num_frames: int = 16, size: int = 112, answer_index: int | None = None
) -> Sample:
    """Render one sample deterministically from ``seed``.

    ``answer_index`` (0-3) fixes the slot of the correct option; by default it is drawn from the
    seed. Either way the rest of the sample is the same for a given seed.
    """
    if family not in _SCENES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if num_frames < MIN_FRAMES:
        raise ValueError(f"num_frames={num_frames} is below the minimum {MIN_FRAMES}")
    rng = np.random.default_rng(seed)
    drawn = int(rng.integers(len(LETTERS)))
    slot = drawn if answer_index is None else answer_index
    scene = _SCENES[family](rng, num_frames, size)
    frames, layout = _render(scene.sprites, _background(rng, size, textured=family == "small_object"), num_frames)
    evidence = tuple(int(t) for t in np.flatnonzero(scene.sprites[0].visible))
    objects = tuple((sprite.shape, sprite.colour) for sprite in scene.sprites)
    options = _options(rng, scene, slot)
    return Sample(seed, family, frames, scene.question, options, LETTERS[slot], evidence, layout, objects)


def sample_specs(split: str, count: int, seed: int | None = None) -> Iterator[SampleSpec]:
    """The first ``count`` samples of a split: seed ``base + index``, families round-robin, letters cycled.

    ``base`` is the split's fixed seed (``SPLIT_SEEDS``) unless ``seed`` is given.
    """
    base = SPLIT_SEEDS[split] if seed is None else seed
    for index in range(count):
        family = FAMILIES[index % len(FAMILIES)]
        yield SampleSpec(index, base + index, family, (index // len(FAMILIES)) % len(LETTERS))


def render_spec(spec: SampleSpec, num_frames: int = 16, size: int = 112) -> Sample:
    """Render the sample a ``SampleSpec`` names (what a trainer does in memory)."""
    return render_sample(spec.seed, spec.family, num_frames, size, spec.answer_index)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] (even H, W) as an H.264 mp4."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=fps, options={"crf": str(CRF), "preset": "medium", "threads": "1"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = PIX_FMT
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_video(path: Path) -> np.ndarray:
    """Every frame of a video as uint8 RGB [T, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def write_split(
    out_dir: str | Path, split: str, count: int, seed: int | None = None, num_frames: int = 16, size: int = 112
) -> Path:
    """Write ``videos/<split>_NNNNN.mp4`` and ``<split>.jsonl`` under ``out_dir``; return the jsonl path.

    Each jsonl line has id, video (relative to the jsonl's folder), question, options (4 strings),
    answer (letter), family, seed and evidence_frames. Old videos of the split are removed first.
    """
    out_dir = Path(out_dir)
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for old in videos.glob(f"{split}_*.mp4"):
        old.unlink()
    records = []
    for spec in sample_specs(split, count, seed):
        sample = render_spec(spec, num_frames, size)
        sample_id = f"{split}_{spec.index:05d}"
        video = f"videos/{sample_id}.mp4"
        write_video(out_dir / video, sample.frames)
        decoded_shape = read_video(out_dir / video).shape
        if decoded_shape != sample.frames.shape:
            raise RuntimeError(f"{video} decodes to {decoded_shape}, expected {sample.frames.shape}")
        records.append(
            {
                "id": sample_id,
                "video": video,
                "question": sample.question,
                "options": sample.options,
                "answer": sample.answer,
                "family": sample.family,
                "seed": sample.seed,
                "evidence_frames": list(sample.evidence_frames),
            }
        )
    jsonl = out_dir / f"{split}.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    return jsonl


def ensure_split(
    split: str, out_dir: str | Path = DATA_DIR, count: int | None = None, num_frames: int = 16, size: int = 112
) -> Path:
    """Return ``<out_dir>/<split>.jsonl``, writing the split first if the jsonl or a video is missing.

    ``count`` defaults to ``DEFAULT_COUNTS[split]``; an existing complete split is returned as is.
    """
    jsonl = Path(out_dir) / f"{split}.jsonl"
    if jsonl.is_file():
        records = [json.loads(line) for line in jsonl.read_text().splitlines()]
        if all((jsonl.parent / record["video"]).is_file() for record in records):
            return jsonl
    return write_split(out_dir, split, count or DEFAULT_COUNTS[split], None, num_frames, size)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: write one split."""
    parser = argparse.ArgumentParser(description="Write a SynthVQA split (mp4 videos + <split>.jsonl).")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="test")
    parser.add_argument("--count", type=int, default=None, help="samples (default: DEFAULT_COUNTS[split])")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: the split's fixed seed)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args(argv)
    count = args.count or DEFAULT_COUNTS[args.split]
    jsonl = write_split(args.out, args.split, count, args.seed, args.num_frames, args.size)
    print(f"wrote {count} {args.split} samples to {jsonl}")


if __name__ == "__main__":
    main()
