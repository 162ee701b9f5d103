"""A deterministic synthetic stand-in for the Oxford-IIIT Pet dataset.

`generate(root)` writes the real dataset's layout, so the ordinary loader reads it
unchanged::

    root/images/<Name>_<n>.jpg
    root/annotations/list.txt        6-line '#' header, then `Image CLASS-ID SPECIES BREED-ID`
    root/annotations/trainval.txt    same line format, no header
    root/annotations/test.txt
    root/SYNTHETIC                   marker: says the data is synthetic, with the parameters

Every image is a procedurally drawn cat or dog (side view) on a cluttered background.
Each of the 37 breeds has a visual identity defined in the two tables below (shape:
build, head, ears, tail, coat, eye colour; colour: palette and markings), and every
image varies pose, proportions, scale, rotation, palette shade, marking placement,
background, clutter, lighting, noise and blur. Related breeds share traits on purpose
(see `CONFUSABLE_GROUPS`), so a classifier's mistakes are structured, not random.

Like the real archive, a few files named `.jpg` are not plain RGB JPEGs (`QUIRKS`):
PNG (RGB and RGBA with transparency), GIF and CMYK JPEG content.

Image numbers run 1..trainval_per_class+test_per_class per class, dealt to the two
splits by a seeded shuffle (as in the real lists, a number says nothing about its split).

Same seed and parameters -> byte-identical files (with the same numpy and Pillow
builds): each image draws from its own `numpy.random.default_rng((seed, class, number))`,
and nothing else is random. `render_image` draws one picture without writing anything.
"""

from __future__ import annotations

import colorsys
import io
import multiprocessing
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BREEDS",
    "CLASS_NAMES",
    "CONFUSABLE_GROUPS",
    "MARKER_NAME",
    "QUIRKS",
    "Breed",
    "generate",
    "is_synthetic",
    "render_image",
]

GENERATOR_VERSION = 3  # bump when drawing changes: a complete old dataset is then regenerated
MARKER_NAME = "SYNTHETIC"
JPEG_QUALITY = 90

CLASS_NAMES: tuple[str, ...] = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees",
    "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher",
    "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
    "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx",
    "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip

# The real list.txt header, typos included.
LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID",
    "#ID: 1:37 Class ids",
    "#SPECIES: 1:Cat 2:Dog",
    "#BREED ID: 1-25:Cat 1:12:Dog",
    "#All images with 1st letter as captial are cat images",
    "#images with small first letter are dog images",
)

# ------------------------------------------------------------------ breed traits

# Shape. build: body proportions; head: skull/muzzle; ears, tail, coat: styles below;
# eyes: iris colour; size: relative size in the frame (a weak cue only).
_SHAPE_TABLE = """
# name                       build     head    ears     tail       coat      eyes    size
Abyssinian                   slim      wedge   large    thin       short     gold    0.95
american_bulldog             stocky    wide    rose     whip       short     brown   1.05
american_pit_bull_terrier    stocky    wide    rose     whip       short     brown   1.0
basset_hound                 long_low  long    long     upright    short     brown   1.0
beagle                       medium    long    floppy   upright    short     brown   0.9
Bengal                       medium    round   pointed  thin       short     green   1.0
Birman                       medium    round   pointed  plume      long      blue    1.0
Bombay                       medium    round   pointed  thin       short     copper  0.95
boxer                        tall      wide    floppy   stub       short     brown   1.05
British_Shorthair            cobby     round   small    thin       short     copper  1.0
chihuahua                    toy       apple   huge     thin       short     dark    0.75
Egyptian_Mau                 slim      round   pointed  thin       short     green   0.95
english_cocker_spaniel       medium    long    long     stub       long      dark    0.95
english_setter               tall      long    long     feathered  long      dark    1.05
german_shorthaired           tall      long    floppy   stub       short     brown   1.05
great_pyrenees               large     fox     drop     plume      fluffy    dark    1.15
havanese                     toy       apple   floppy   curled     long      dark    0.8
japanese_chin                toy       flat    floppy   curled     long      dark    0.8
keeshond                     medium    fox     erect    curled     fluffy    dark    1.0
leonberger                   large     broad   floppy   otter      fluffy    brown   1.15
Maine_Coon                   large     round   tufted   plume      long      gold    1.1
miniature_pinscher           toy       fox     erect    stub       short     dark    0.8
newfoundland                 large     broad   floppy   otter      fluffy    brown   1.2
Persian                      cobby     flat    small    plume      fluffy    copper  1.0
pomeranian                   toy       fox     erect    curled     fluffy    dark    0.75
pug                          cobby     flat    rose     curled     short     dark    0.85
Ragdoll                      large     round   pointed  plume      long      blue    1.1
Russian_Blue                 slim      wedge   large    thin       short     green   0.95
saint_bernard                large     broad   floppy   otter      long      brown   1.2
samoyed                      medium    fox     erect    curled     fluffy    dark    1.05
scottish_terrier             long_low  long    erect    upright    wiry      dark    0.9
shiba_inu                    medium    fox     erect    curled     short     dark    0.95
Siamese                      slim      wedge   large    thin       short     blue    0.95
Sphynx                       slim      wedge   huge     thin       hairless  green   0.95
staffordshire_bull_terrier   stocky    wide    rose     whip       short     brown   0.95
wheaten_terrier              medium    long    drop     upright    wiry      dark    1.0
yorkshire_terrier            toy       fox     erect    stub       long      dark    0.75
"""

# Colour. palettes: named colours, base first ('|' separates alternatives, one is
# picked per image); markings: kind:colour-index (index into the palette).
_COLOUR_TABLE = """
# name                       palettes                          markings
Abyssinian                   ruddy,chocolate                   ticked:1
american_bulldog             white,tan                         patches:1
american_pit_bull_terrier    fawn,white|blue,white|red,white   underside:1
basset_hound                 tan,white,black                   saddle:2 underside:1 socks:1
beagle                       tan,white,black                   saddle:2 underside:1 socks:1
Bengal                       gold,seal,cream                   underside:2 rosettes:1
Birman                       cream,seal,white                  points:1 socks:2
Bombay                       black                             -
boxer                        fawn,white,black                  underside:1 mask:2 socks:1
British_Shorthair            blue                              -
chihuahua                    fawn,white|cream,white|black,tan  underside:1
Egyptian_Mau                 silver,black                      spots:1
english_cocker_spaniel       red|black|gold                    -
english_setter               white,black|white,orange          ticked:1 headpatch:1
german_shorthaired           liver,white                       ticked:1 head:0
great_pyrenees               white,cream                       ears:1
havanese                     cream,white|white,tan             patches:1
japanese_chin                white,black                       headpatch:1 patches:1
keeshond                     grey,black,silver                 saddle:1 mask:1 underside:2
leonberger                   gold,black                        mask:1
Maine_Coon                   brown,black,cream                 stripes:1 underside:2
miniature_pinscher           black,tan|black,tan|red,red       tan:1
newfoundland                 black                             -
Persian                      white|grey|cream|black            -
pomeranian                   orange,cream                      underside:1
pug                          fawn,black                        mask:1 ears:1 wrinkles:1
Ragdoll                      cream,lilac,white                 points:1 underside:2 socks:2
Russian_Blue                 silverblue                        -
saint_bernard                white,red,seal                    patches:1 headpatch:1 mask:2
samoyed                      white                             -
scottish_terrier             black|wheat                       -
shiba_inu                    orange,cream                      underside:1
Siamese                      cream,seal                        points:1
Sphynx                       pink,skin                         wrinkles:1 patches:1
staffordshire_bull_terrier   brindle,white,black               brindle:2 underside:1
wheaten_terrier              wheat                             -
yorkshire_terrier            tan,steel                         saddle:1
"""

# Groups drawn to look alike (shared shape and/or palette, different detail).
CONFUSABLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("Siamese", "Birman", "Ragdoll"),  # colourpoint cats; Birman/Ragdoll both long-coated
    ("British_Shorthair", "Russian_Blue"),  # solid grey-blue cats (cobby vs slim)
    ("Bengal", "Egyptian_Mau"),  # spotted cats (gold rosettes vs silver spots)
    ("american_bulldog", "american_pit_bull_terrier", "staffordshire_bull_terrier"),  # bully
    ("basset_hound", "beagle"),  # same tricolour palette, long-low vs medium build
    ("samoyed", "great_pyrenees"),  # white fluffy dogs (erect vs drop ears, curled tail)
    ("shiba_inu", "pomeranian"),  # orange/cream spitz (short vs fluffy coat)
    ("boxer", "pug", "leonberger"),  # fawn/gold with a black mask
    ("Bombay", "newfoundland", "scottish_terrier"),  # solid black
    ("chihuahua", "miniature_pinscher"),  # toy dogs, big erect ears; black-and-tan palettes
    ("Abyssinian", "Sphynx", "Russian_Blue", "Siamese"),  # slim wedge-headed large-eared cats
)

_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (242, 239, 232), "cream": (232, 220, 194), "silver": (192, 192, 184),
    "grey": (150, 150, 144), "blue": (124, 132, 146), "silverblue": (152, 164, 180),
    "lilac": (112, 114, 132), "steel": (78, 86, 104), "black": (30, 27, 27),
    "seal": (62, 44, 36), "chocolate": (94, 58, 38), "liver": (102, 62, 42),
    "brindle": (96, 66, 46), "brown": (132, 96, 62), "ruddy": (180, 110, 58),
    "red": (172, 92, 46), "tan": (186, 124, 64), "orange": (222, 140, 68),
    "gold": (210, 154, 72), "fawn": (206, 166, 112), "wheat": (222, 198, 146),
    "pink": (226, 184, 164), "skin": (170, 122, 108),
}  # fmt: skip

_EYE_COLOURS: dict[str, tuple[int, int, int]] = {
    "gold": (214, 170, 40), "green": (120, 172, 70), "blue": (80, 150, 226),
    "copper": (204, 112, 36), "brown": (92, 52, 28), "dark": (40, 26, 20),
}  # fmt: skip


@dataclass(frozen=True)
class Breed:
    name: str
    species: int  # 1 = cat, 2 = dog
    build: str
    head: str
    ears: str
    tail: str
    coat: str
    eyes: str
    size: float
    palettes: tuple[tuple[tuple[int, int, int], ...], ...]
    markings: tuple[tuple[str, int], ...]


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            continue
        fields = line.split()
        rows[fields[0]] = fields[1:]
    return rows


def _parse_breeds() -> tuple[Breed, ...]:
    shapes, colours = _table_rows(_SHAPE_TABLE), _table_rows(_COLOUR_TABLE)
    assert list(shapes) == list(CLASS_NAMES) == list(colours), "trait tables out of order"
    breeds = []
    for name in CLASS_NAMES:
        build, head, ears, tail, coat, eyes, size = shapes[name]
        palette_text, *marking_text = colours[name]
        palettes = tuple(
            tuple(_COLOURS[c] for c in alt.split(",")) for alt in palette_text.split("|")
        )
        markings = tuple(
            (kind, int(index))
            for kind, index in (m.split(":") for m in marking_text if m != "-")
        )
        breeds.append(
            Breed(name, 1 if name[0].isupper() else 2, build, head, ears, tail, coat, eyes,
                  float(size), palettes, markings)
        )  # fmt: skip
    return tuple(breeds)


BREEDS: tuple[Breed, ...] = _parse_breeds()

# Quirk files (named .jpg, other content): (class name, split, rank in that split, format).
QUIRKS: tuple[tuple[str, str, int, str], ...] = (
    ("Abyssinian", "trainval", 0, "png"),
    ("Egyptian_Mau", "test", 0, "png-rgba"),
    ("beagle", "trainval", 0, "gif"),
    ("chihuahua", "test", 0, "cmyk"),
)

# ------------------------------------------------------------------ geometry presets

# Each animal is drawn on its own canvas, facing right, feet on the ground line.
CANVAS_WIDTH, CANVAS_HEIGHT, GROUND_Y = 400, 300, 276
# Part masks are drawn at canvas size, then coloured and shaded at 1/SHADING_STEP of it
# (for speed): the shading arrays are SHADING_WIDTH x SHADING_HEIGHT.
SHADING_STEP = 2
SHADING_WIDTH, SHADING_HEIGHT = CANVAS_WIDTH // SHADING_STEP, CANVAS_HEIGHT // SHADING_STEP


class _Build(NamedTuple):
    body_length: float
    body_height: float
    leg_length: float
    leg_width: float


class _Head(NamedTuple):
    half_width: float
    half_height: float
    muzzle_length: float  # 0: a flat face
    muzzle_height: float
    boxy_muzzle: bool


class _Ears(NamedTuple):
    style: str  # tri: upright triangle; hang: long, hanging; rose: folded back; drop: small V
    width: float  # width and height as fractions of the head's half-width
    height: float


_BUILDS = {
    "slim": _Build(150, 62, 62, 13), "medium": _Build(160, 74, 54, 17),
    "cobby": _Build(148, 84, 38, 20), "stocky": _Build(160, 92, 48, 25),
    "tall": _Build(172, 80, 76, 18), "large": _Build(185, 94, 66, 24),
    "long_low": _Build(205, 76, 28, 21), "toy": _Build(120, 60, 40, 11),
}  # fmt: skip
_HEADS = {
    "round": _Head(42, 39, 8, 18, False), "wedge": _Head(36, 38, 14, 17, False),
    "flat": _Head(46, 44, 0, 0, False), "apple": _Head(40, 42, 12, 15, False),
    "wide": _Head(50, 45, 24, 34, True), "broad": _Head(44, 40, 34, 30, True),
    "long": _Head(38, 35, 42, 24, False), "fox": _Head(38, 35, 30, 19, False),
}  # fmt: skip
_EARS = {
    "pointed": _Ears("tri", 0.6, 0.65), "large": _Ears("tri", 0.75, 0.95),
    "huge": _Ears("tri", 0.9, 1.25), "tufted": _Ears("tri", 0.65, 0.8),
    "small": _Ears("tri", 0.5, 0.38), "erect": _Ears("tri", 0.55, 0.85),
    "floppy": _Ears("hang", 0.55, 1.35), "long": _Ears("hang", 0.6, 2.0),
    "rose": _Ears("rose", 0.5, 0.4), "drop": _Ears("drop", 0.55, 0.8),
}  # fmt: skip
# Extra fur strokes per coat: how many, shortest and longest stroke, stroke width.
_COAT_STROKES = {"long": (40, 8, 18, 3), "fluffy": (70, 6, 16, 4), "wiry": (60, 3, 9, 2)}


@dataclass(frozen=True)
class _Figure:
    """Where one animal's parts lie on its canvas (canvas units, y down, facing right).

    The body is an ellipse centred at `body_centre_x` between `body_top` and
    `body_bottom`; the head an ellipse centred at (`head_x`, `head_y`); the muzzle sits
    at the front of the head, from `muzzle_start_x` to `muzzle_tip_x`.
    """

    body_length: float
    body_height: float
    leg_length: float
    leg_width: float
    head_half_width: float
    head_half_height: float
    muzzle_length: float  # 0: a flat face, no muzzle
    muzzle_height: float
    boxy_muzzle: bool
    body_centre_x: float
    body_bottom: float  # where the legs start
    head_x: float
    head_y: float

    @property
    def body_top(self) -> float:
        return self.body_bottom - self.body_height

    @property
    def body_left(self) -> float:
        return self.body_centre_x - self.body_length / 2

    @property
    def body_right(self) -> float:
        return self.body_centre_x + self.body_length / 2

    @property
    def muzzle_start_x(self) -> float:
        return self.head_x + self.head_half_width * 0.5 - self.muzzle_height * 0.3

    @property
    def muzzle_tip_x(self) -> float:
        return self.head_x + self.head_half_width * 0.5 + self.muzzle_length

    @property
    def muzzle_y(self) -> float:  # the muzzle's centre line
        return self.head_y + self.head_half_height * 0.25

    @property
    def eye(self) -> tuple[float, float]:
        """The eye's centre on a face with a muzzle (a flat face has it further forward)."""
        return (self.head_x + self.head_half_width * 0.42,
                self.head_y - self.head_half_height * 0.12)  # fmt: skip


def _figure(breed: Breed, rng: np.random.Generator) -> _Figure:
    """The breed's proportions, each varied a little, placed on the canvas."""
    build, head = _BUILDS[breed.build], _HEADS[breed.head]

    def vary(low: float, high: float) -> float:
        return rng.uniform(low, high)

    body_length = build.body_length * vary(0.9, 1.1)
    body_height = build.body_height * vary(0.9, 1.1)
    leg_width = build.leg_width * vary(0.9, 1.1)
    leg_length = build.leg_length * vary(0.85, 1.15)
    if rng.random() < 0.15:  # lying down
        leg_length *= 0.25
    head_scale = vary(0.9, 1.1)
    head_half_width = head.half_width * head_scale
    head_half_height = head.half_height * head_scale
    muzzle_length = head.muzzle_length * vary(0.85, 1.15)
    muzzle_height = head.muzzle_height * vary(0.9, 1.1)
    body_centre_x = 180 + vary(-8, 8)
    body_bottom = GROUND_Y - leg_length
    body_top = body_bottom - body_height
    neck = 0.2 if breed.species == 1 else 0.45  # how far above the back the head sits
    head_x = body_centre_x + body_length / 2 + head_half_width * vary(-0.05, 0.25)
    head_y = body_top - head_half_height * neck + vary(-12, 12)
    return _Figure(
        body_length, body_height, leg_length, leg_width, head_half_width, head_half_height,
        muzzle_length, muzzle_height, head.boxy_muzzle, body_centre_x, body_bottom, head_x,
        head_y,
    )  # fmt: skip


# ------------------------------------------------------------------ drawing helpers


def _new_mask() -> Image.Image:
    return Image.new("L", (CANVAS_WIDTH, CANVAS_HEIGHT), 0)


def _shading_array(mask: Image.Image, blur: float = 0.0) -> np.ndarray:
    """A canvas mask as a 0..1 float array at shading resolution, optionally softened."""
    small = mask.reduce(SHADING_STEP)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur / SHADING_STEP))
    return np.asarray(small, dtype=np.float32) / 255.0


def _blurred(array: np.ndarray, blur: float) -> np.ndarray:
    """A 0..1 shading array, blurred by `blur` canvas units."""
    image = Image.fromarray((array * 255).astype(np.uint8), "L")
    blurred = image.filter(ImageFilter.GaussianBlur(blur / SHADING_STEP))
    return np.asarray(blurred, np.float32) / 255.0


_NOISE_BANK: list[np.ndarray] = []


def _pixel_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit gaussian noise (h, w, 3): a random window of a fixed bank (fast, deterministic)."""
    if not _NOISE_BANK:
        _NOISE_BANK.append(np.random.default_rng(20240).standard_normal((640, 640, 3), np.float32))
    bank = _NOISE_BANK[0]
    top, left = int(rng.integers(0, 641 - h)), int(rng.integers(0, 641 - w))
    window = bank[top : top + h, left : left + w]
    return window[::-1] if rng.random() < 0.5 else window


# y of each shading array row, in canvas units
_ROW_Y = (np.arange(SHADING_HEIGHT, dtype=np.float32)[:, None] + 0.5) * SHADING_STEP


def _bezier(p0, p1, p2, n: int = 14) -> list[tuple[float, float]]:
    """`n` points along the quadratic Bezier curve from p0 to p2, pulled towards p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [(float(x), float(y)) for x, y in pts]


def _tapered_stroke(
    draw: ImageDraw.ImageDraw, points, start_width: float, end_width: float
) -> None:
    """A stroke through `points` whose width goes from `start_width` to `end_width`."""
    for i in range(len(points) - 1):
        width = start_width + (end_width - start_width) * i / max(1, len(points) - 2)
        draw.line([points[i], points[i + 1]], fill=255, width=max(1, int(round(width))))
        r = width / 2
        x, y = points[i + 1]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)


def _random_colour(rng: np.random.Generator, s_max: float = 0.65) -> tuple[int, int, int]:
    """Any hue, saturation up to `s_max`, not too dark or too bright."""
    h, s, v = rng.random(), rng.uniform(0.0, s_max), rng.uniform(0.2, 0.97)
    return tuple(int(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


# ------------------------------------------------------------------ the animal

_PARTS = ("far", "body", "legs", "head", "muzzle", "ears", "tail")  # then "coat"


def _draw_parts(breed: Breed, fig: _Figure, rng: np.random.Generator) -> dict[str, Image.Image]:
    """Part masks: far (far legs, far ear), body, legs, head, muzzle, ears, tail, coat."""
    masks = {name: _new_mask() for name in _PARTS}
    draw = {name: ImageDraw.Draw(mask) for name, mask in masks.items()}
    body_length, body_height = fig.body_length, fig.body_height
    body_top, body_bottom = fig.body_top, fig.body_bottom
    centre_x, leg_width = fig.body_centre_x, fig.leg_width
    head_x, head_y = fig.head_x, fig.head_y
    head_w, head_h = fig.head_half_width, fig.head_half_height  # half-width and half-height

    # body, haunch, neck
    body = draw["body"]
    body.ellipse([fig.body_left, body_top, fig.body_right, body_bottom + body_height * 0.1],
                 fill=255)  # fmt: skip
    body.ellipse([fig.body_left + 4, body_bottom - body_height * 0.8,
                  centre_x - body_length * 0.12, body_bottom + body_height * 0.12],
                 fill=255)  # fmt: skip
    neck_x, neck_y = centre_x + body_length * 0.34, body_top + body_height * 0.45
    body.line([(neck_x, neck_y), (head_x - head_w * 0.2, head_y + head_h * 0.2)], fill=255,
              width=int(head_h * 1.3))  # fmt: skip
    r = body_height * 0.45
    body.ellipse([neck_x - r, neck_y - r, neck_x + r, neck_y + r], fill=255)

    # legs: near pair in front, far pair (shaded) slightly offset
    for part, offset in (("far", 0.09 * body_length), ("legs", 0.0)):
        for base in (centre_x + body_length * 0.3, centre_x - body_length * 0.3):
            x = base + offset + rng.uniform(-6, 6)
            draw[part].rounded_rectangle(
                [x - leg_width / 2, body_bottom - body_height * 0.3, x + leg_width / 2, GROUND_Y],
                leg_width / 2.5, 255,
            )  # fmt: skip
            draw[part].ellipse([x - leg_width / 2 - 2, GROUND_Y - leg_width * 0.55,
                                x + leg_width / 2 + 6, GROUND_Y + 2], fill=255)  # fmt: skip

    # head and muzzle
    draw["head"].ellipse([head_x - head_w, head_y - head_h, head_x + head_w, head_y + head_h],
                         fill=255)  # fmt: skip
    if fig.muzzle_length > 0:
        box = [fig.muzzle_start_x, fig.muzzle_y - fig.muzzle_height / 2, fig.muzzle_tip_x,
               fig.muzzle_y + fig.muzzle_height / 2]  # fmt: skip
        if fig.boxy_muzzle:
            draw["muzzle"].rounded_rectangle(box, fig.muzzle_height / 3, 255)
        else:
            draw["muzzle"].ellipse(box, fill=255)

    # ears
    ears = _EARS[breed.ears]
    ear_w = ears.width * head_w * rng.uniform(0.85, 1.15)
    ear_h = ears.height * head_w * rng.uniform(0.85, 1.15)
    tilt = rng.uniform(-0.25, 0.15) * ear_w  # how far the tip leans forward
    ear_base_y = head_y - head_h * 0.75
    for part, x in (("far", head_x + head_w * 0.18), ("ears", head_x - head_w * 0.3)):
        d = draw[part]
        if ears.style == "tri":
            tip = (x + tilt, ear_base_y - ear_h)
            d.polygon([(x - ear_w / 2, ear_base_y + ear_h * 0.3),
                       (x + ear_w / 2, ear_base_y + ear_h * 0.3), tip], fill=255)  # fmt: skip
            if breed.ears == "tufted":
                d.line([tip, (tip[0] - 2, tip[1] - 10)], 255, 3)
            if breed.ears == "small":
                d.ellipse([x - ear_w / 2, ear_base_y - ear_h * 0.6, x + ear_w / 2,
                           ear_base_y + ear_h * 0.6], 255)  # fmt: skip
        elif part == "far" and ears.style in ("hang", "drop"):
            continue  # hidden behind the head
        elif ears.style == "hang":
            left, top_y = head_x - head_w * 0.55, head_y - head_h * 0.8
            d.ellipse([left, top_y, left + ear_w, top_y + ear_h], fill=255)
        elif ears.style == "rose":
            d.polygon([(x - ear_w * 0.6, ear_base_y + ear_h * 0.2), (x + ear_w * 0.5, ear_base_y),
                       (x - ear_w * 0.9, ear_base_y - ear_h * 0.9)], fill=255)  # fmt: skip
        else:  # drop: a small V hanging at the side of the head
            d.polygon([(x - ear_w * 0.6, ear_base_y), (x + ear_w * 0.6, ear_base_y - 2),
                       (x - ear_w * 0.1, ear_base_y + ear_h * 1.1)], fill=255)  # fmt: skip

    # tail, from its root at the back of the body
    d = draw["tail"]
    root_x, root_y = fig.body_left + 8, body_top + body_height * 0.3
    tail = body_length * rng.uniform(0.45, 0.6)

    def curve(bend_x: float, bend_y: float, end_x: float, end_y: float):
        """A curve from the root, as fractions of the tail's length (x backwards)."""
        return _bezier((root_x, root_y), (root_x - tail * bend_x, root_y + tail * bend_y),
                       (root_x - tail * end_x, root_y + tail * end_y))  # fmt: skip

    if breed.tail in ("thin", "plume"):
        width = 8 if breed.tail == "thin" else 18
        if rng.random() < 0.5:  # held up
            points = curve(0.5, 0.15, 0.45, -0.7)
        else:  # hanging
            points = curve(0.35, 0.6, 0.8, 0.5)
        _tapered_stroke(d, points, width, width * 0.75)
    elif breed.tail == "upright":
        _tapered_stroke(d, curve(0.25, -0.3, 0.3, -0.75), 10, 5)
    elif breed.tail == "whip":
        _tapered_stroke(d, curve(0.4, 0.2, 0.55, 0.7), 12, 3)
    elif breed.tail in ("otter", "feathered"):
        points = curve(0.25, 0.45, 0.4, 0.9)
        if breed.tail == "otter":
            _tapered_stroke(d, points, 18, 10)
        else:
            _tapered_stroke(d, points, 11, 6)
            d.polygon([points[3], points[-1], (points[-1][0] + 16, points[-1][1] - 6)], fill=255)
    elif breed.tail == "curled":
        r = body_height * rng.uniform(0.28, 0.36)
        curl_x, curl_y = root_x + r * 0.6, body_top - r * 0.35
        d.ellipse([curl_x - r, curl_y - r, curl_x + r, curl_y + r], outline=255,
                  width=int(r * 0.75))  # fmt: skip
    else:  # stub
        d.ellipse([root_x - 12, root_y - 8, root_x + 4, root_y + 6], fill=255)

    # coat: extra fur drawn into its own mask (fringes, ruffs, jagged outlines)
    masks["coat"] = coat = _new_mask()
    d = ImageDraw.Draw(coat)
    if breed.coat in _COAT_STROKES:
        strokes, shortest, longest, width = _COAT_STROKES[breed.coat]
        # strokes start on the body's and the head's outline, alternately
        outlines = [(centre_x, body_top + body_height * 0.55, body_length / 2, body_height * 0.55),
                    (head_x, head_y, head_w, head_h)]  # fmt: skip
        for i in range(strokes):
            outline_x, outline_y, half_w, half_h = outlines[i % 2]
            if breed.coat == "long":  # fringe hangs below the body
                angle = rng.uniform(0.15, 0.85) * np.pi
                fur = rng.uniform(shortest, longest) * (1.0 if i % 2 == 0 else 0.5)
                x0, y0 = outline_x + half_w * np.cos(angle), outline_y + half_h * np.sin(angle)
                x1, y1 = x0 + rng.uniform(-3, 3), y0 + fur
            else:
                angle = rng.uniform(0, 2 * np.pi)
                fur = rng.uniform(shortest, longest)
                x0, y0 = outline_x + half_w * np.cos(angle), outline_y + half_h * np.sin(angle)
                x1, y1 = x0 + fur * np.cos(angle), y0 + fur * np.sin(angle)
            d.line([(x0, y0), (x1, y1)], fill=255, width=width)
        if breed.coat == "fluffy":  # ruff around the neck and chest
            d.ellipse([head_x - head_w * 1.2, head_y - head_h * 0.4, head_x + head_w * 0.6,
                       body_top + body_height * 0.9], fill=255)  # fmt: skip
        if breed.coat == "wiry" and fig.muzzle_length > 0:  # beard
            d.ellipse([fig.muzzle_start_x, fig.muzzle_y, fig.muzzle_tip_x - 2,
                       fig.muzzle_y + fig.muzzle_height * 1.1], fill=255)  # fmt: skip
        if breed.ears == "long":  # feathered ears
            left, top_y = head_x - head_w * 0.55, head_y - head_h * 0.8 + ear_w * 0.1
            d.ellipse([left - 3, top_y + ear_h * 0.3, left + ear_w + 4, top_y + ear_h + 8],
                      fill=255)  # fmt: skip
    return masks


def _marking_mask(
    kind: str,
    fig: _Figure,
    masks: dict[str, Image.Image],
    part_arrays: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Soft 0..1 mask of where a marking's colour goes, at shading resolution.

    `masks`: the part masks from `_draw_parts`; `part_arrays`: the same as shading arrays.
    """
    body_length, body_height = fig.body_length, fig.body_height
    body_top, body_bottom = fig.body_top, fig.body_bottom
    centre_x = fig.body_centre_x
    head_x, head_y = fig.head_x, fig.head_y
    head_w, head_h = fig.head_half_width, fig.head_half_height  # half-width and half-height
    above_head_centre = _ROW_Y < head_y  # of the far part (far legs, far ear): the ear
    mask = _new_mask()
    d = ImageDraw.Draw(mask)
    if kind == "ticked":
        speckles = rng.random((SHADING_HEIGHT, SHADING_WIDTH), dtype=np.float32) < 0.4
        return speckles.astype(np.float32) * 0.55
    if kind in ("spots", "rosettes"):
        count = rng.integers(24, 36) if kind == "spots" else rng.integers(13, 19)
        for _ in range(count):
            x = rng.uniform(fig.body_left + 4, fig.body_right + 8)
            y = rng.uniform(body_top + 4, body_bottom + (GROUND_Y - body_bottom) * 0.6)
            radius_x = rng.uniform(4, 7.5) if kind == "spots" else rng.uniform(7, 11)
            radius_y = radius_x * rng.uniform(0.7, 1.0)
            box = [x - radius_x, y - radius_y, x + radius_x, y + radius_y]
            if kind == "spots":
                d.ellipse(box, fill=255)
            else:  # a rosette: a dark ring around a lighter middle
                d.ellipse(box, fill=110, outline=255, width=3)
        return _shading_array(mask, 0.6)
    if kind in ("stripes", "brindle"):
        if kind == "stripes":
            step, width, strength = rng.uniform(15, 20), rng.uniform(5, 7), 0.9
        else:
            step, width, strength = rng.uniform(6, 8), 2.5, 0.55
        x = fig.body_left - body_length * 0.45
        while x < fig.body_right + 6:  # wavy vertical stripes down the flank
            y0 = body_top - 4
            y1 = body_top + body_height * rng.uniform(0.55, 0.85)
            mid = (x + rng.uniform(-6, 6), (y0 + y1) / 2)
            d.line(_bezier((x, y0), mid, (x + rng.uniform(-8, 8), y1), 6), 255, int(width))
            x += step * rng.uniform(0.85, 1.15)
        if kind == "stripes":
            y = body_bottom + 6
            while y < GROUND_Y - 6:  # leg bands
                d.line([(0, y), (CANVAS_WIDTH, y + rng.uniform(-3, 3))], fill=255, width=4)
                y += rng.uniform(11, 15)
            for i in range(3):  # forehead
                x = head_x - head_w * 0.35 + i * head_w * 0.28
                d.line([(x, head_y - head_h * 0.95), (x + 2, head_y - head_h * 0.45)], fill=255,
                       width=3)  # fmt: skip
        return _shading_array(mask, 0.8) * strength
    if kind == "patches":
        for _ in range(rng.integers(2, 5)):
            x = rng.uniform(fig.body_left, head_x + head_w)
            y = rng.uniform(head_y - head_h, body_bottom)
            radius_x, radius_y = rng.uniform(16, 42), rng.uniform(13, 32)
            d.ellipse([x - radius_x, y - radius_y, x + radius_x, y + radius_y], fill=255)
        return _shading_array(mask, 1.5)
    if kind == "headpatch":  # ears and a patch over the eye
        mask = masks["ears"].copy()
        d = ImageDraw.Draw(mask)
        eye_x, eye_y = fig.eye
        r = head_w * rng.uniform(0.35, 0.5)
        d.ellipse([eye_x - r * 1.2, eye_y - r, eye_x + r * 0.6, eye_y + r * 0.8], fill=255)
        d.ellipse([head_x - head_w * 0.9, head_y - head_h, head_x + head_w * 0.1,
                   head_y + head_h * 0.2], fill=255)  # fmt: skip
        return np.maximum(_shading_array(mask, 1.5), part_arrays["far"] * above_head_centre)
    if kind in ("points", "tan"):
        leg_cut = body_bottom + (GROUND_Y - body_bottom) * (0.15 if kind == "points" else 0.45)
        legs = np.maximum(part_arrays["legs"], part_arrays["far"]) * (_ROW_Y > leg_cut)
        if kind == "points":  # the face, ears, tail and legs of a colourpoint cat
            d.ellipse([head_x + head_w * 0.05, head_y - head_h * 0.45, fig.muzzle_tip_x + 4,
                       head_y + head_h * 0.95], fill=255)  # fmt: skip
            region = np.maximum(_shading_array(mask, 5), legs)
            for name in ("ears", "tail", "muzzle"):
                region = np.maximum(region, part_arrays[name])
            region = np.maximum(region, part_arrays["far"] * above_head_centre)
            return np.clip(region, 0, 1) * 0.95
        # tan: muzzle, chest, a dot over the eye, lower legs
        mask = masks["muzzle"].copy()
        d = ImageDraw.Draw(mask)
        d.ellipse([centre_x + body_length * 0.3, body_bottom - body_height * 0.6,
                   centre_x + body_length * 0.55, body_bottom - body_height * 0.05],
                  fill=255)  # fmt: skip
        eye_x, eye_y = fig.eye
        d.ellipse([eye_x - 5, eye_y - 14, eye_x + 5, eye_y - 6], fill=255)  # eyebrow dot
        return np.maximum(_shading_array(mask, 2.5), legs)
    if kind == "underside":
        d.ellipse([centre_x - body_length * 0.35, body_bottom - body_height * 0.32,
                   centre_x + body_length * 0.5 + 6, body_bottom + body_height * 0.3],
                  fill=255)  # fmt: skip
        d.ellipse([head_x - head_w * 0.6, head_y + head_h * 0.15, head_x + head_w * 0.5,
                   body_bottom - body_height * 0.1], fill=255)  # fmt: skip
        d.ellipse([fig.muzzle_start_x, fig.muzzle_y, fig.muzzle_tip_x + 2,
                   fig.muzzle_y + fig.muzzle_height], fill=255)  # fmt: skip
        return _shading_array(mask, 4)
    if kind == "saddle":
        d.ellipse([fig.body_left - 10, body_top - 14, centre_x + body_length * 0.28,
                   body_top + body_height * 0.6], fill=255)  # fmt: skip
        return _shading_array(mask, 4)
    if kind == "mask":
        mask = masks["muzzle"].copy()
        d = ImageDraw.Draw(mask)
        eye_x, eye_y = fig.eye
        d.ellipse([eye_x - head_w * 0.35, eye_y - head_h * 0.3, fig.muzzle_tip_x,
                   fig.muzzle_y + fig.muzzle_height * 0.5], fill=255)  # fmt: skip
        return _shading_array(mask, 3) * 0.92
    if kind == "socks":
        cut = GROUND_Y - (GROUND_Y - body_bottom) * 0.4 - 4
        legs = np.maximum(part_arrays["legs"], part_arrays["far"])
        return legs * (_ROW_Y > cut)
    if kind == "ears":
        return np.maximum(_shading_array(masks["ears"], 1),
                          _shading_array(masks["far"], 1) * above_head_centre)  # fmt: skip
    if kind == "head":
        mask = masks["head"].copy()
        mask.paste(255, mask=masks["muzzle"])
        mask.paste(255, mask=masks["ears"])
        return _shading_array(mask, 2)
    if kind == "wrinkles":
        for i in range(4):  # on the forehead
            y = head_y - head_h * 0.7 + i * head_h * 0.2
            d.arc([head_x - head_w * 0.6, y, head_x + head_w * 0.7, y + head_h * 0.5], 200, 340,
                  255, 2)  # fmt: skip
        for i in range(3):  # on the shoulder
            x = centre_x + body_length * (0.2 + 0.08 * i)
            d.arc([x - 14, body_top + 8, x + 14, body_top + body_height * 0.7], 240, 300, 255, 2)
        return _shading_array(mask, 0.5) * 0.6
    raise ValueError(f"unknown marking kind {kind!r}")


def _draw_animal(
    breed: Breed, rng: np.random.Generator
) -> tuple[Image.Image, _Figure, np.ndarray]:
    """One animal without its face, facing right, on a transparent shading-size canvas.

    Returns the image, its figure (canvas units) and its base fur colour, for `_draw_face`.
    """
    fig = _figure(breed, rng)
    masks = _draw_parts(breed, fig, rng)
    part_arrays = {name: _shading_array(mask) for name, mask in masks.items()}

    palette = breed.palettes[int(rng.integers(len(breed.palettes)))]
    shade = rng.normal(1.0, 0.05)
    colours = [np.clip(np.array(c) * shade + rng.normal(0, 6, 3), 0, 255) for c in palette]

    silhouette = np.maximum.reduce([part_arrays[name] for name in (*_PARTS, "coat")])
    if breed.coat == "fluffy":  # puff the whole outline
        silhouette = np.maximum(silhouette, np.clip(_blurred(silhouette, 5) * 3 - 0.6, 0, 1))

    # fur colour over the whole canvas: base, then markings in table order
    fur = np.empty((SHADING_HEIGHT, SHADING_WIDTH, 3), np.float32)
    fur[:] = colours[0]
    for kind, index in breed.markings:
        coverage = _marking_mask(kind, fig, masks, part_arrays, rng)[..., None]
        fur += (colours[min(index, len(colours) - 1)] - fur) * coverage

    # texture and shading
    shape = (SHADING_HEIGHT, SHADING_WIDTH)
    if breed.coat == "short":
        texture = 1.0 + 0.035 * rng.standard_normal(shape, dtype=np.float32)
    elif breed.coat == "hairless":
        texture = np.ones(shape, np.float32)
    else:  # streaky fur: noise stretched 4x vertically
        streaks = rng.standard_normal((SHADING_HEIGHT // 4 + 1, SHADING_WIDTH), dtype=np.float32)
        texture = np.repeat(1.0 + 0.06 * streaks, 4, 0)[:SHADING_HEIGHT]
    highest = min(fig.body_top, fig.head_y - fig.head_half_height)
    vertical = 1.1 - 0.28 * np.clip((_ROW_Y - highest) / (GROUND_Y - highest), 0, 1)
    rim = 0.72 + 0.28 * np.clip(_blurred(silhouette, 3) * 1.6 - 0.3, 0, 1)  # darker outline
    far_only = part_arrays["far"] * (1 - np.maximum.reduce(
        [part_arrays[name] for name in ("body", "legs", "head", "ears")]))  # fmt: skip
    light = texture * vertical * rim * (1 - 0.22 * far_only)
    fur = np.clip(fur * light[..., None], 0, 255)

    image = Image.fromarray(fur.astype(np.uint8), "RGB")
    image.putalpha(Image.fromarray((silhouette * 255).astype(np.uint8), "L"))
    return image, fig, colours[0]


class _Mapped:
    """ImageDraw on the final animal picture, taking canvas coordinates.

    The picture is the canvas at 1/SHADING_STEP, cropped to `bbox`, maybe mirrored,
    rotated by `angle` degrees (PIL's sense, expanded) and resized to the picture's size.
    """

    def __init__(self, img: Image.Image, bbox, flip: bool, angle: float, rotated_size) -> None:
        self.draw = ImageDraw.Draw(img)
        self.crop_left, self.crop_top = bbox[0], bbox[1]
        self.crop_width, self.crop_height = bbox[2] - bbox[0], bbox[3] - bbox[1]
        self.flip = flip
        self.cos, self.sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        self.rotated_width, self.rotated_height = rotated_size
        self.scale_x = img.width / self.rotated_width
        self.scale_y = img.height / self.rotated_height

    def _point(self, x: float, y: float) -> tuple[float, float]:
        x, y = x / SHADING_STEP - self.crop_left, y / SHADING_STEP - self.crop_top
        if self.flip:
            x = self.crop_width - x
        dx, dy = x - self.crop_width / 2, y - self.crop_height / 2
        rotated_x = self.cos * dx + self.sin * dy + self.rotated_width / 2
        rotated_y = -self.sin * dx + self.cos * dy + self.rotated_height / 2
        return float(rotated_x * self.scale_x), float(rotated_y * self.scale_y)

    def _box(self, box) -> list[float]:
        """An axis-aligned box around the mapped centre (shapes this small stay upright)."""
        centre_x, centre_y = self._point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        radius_x = abs(box[2] - box[0]) / 2 / SHADING_STEP * self.scale_x
        radius_y = abs(box[3] - box[1]) / 2 / SHADING_STEP * self.scale_y
        return [centre_x - radius_x, centre_y - radius_y, centre_x + radius_x, centre_y + radius_y]

    def _width(self, width: float) -> int:
        return max(1, int(round(width * self.scale_x / SHADING_STEP)))

    def ellipse(self, box, fill=None, outline=None) -> None:
        self.draw.ellipse(self._box(box), fill=fill, outline=outline, width=self._width(1.5))

    def arc(self, box, start: float, end: float, fill, width: float) -> None:
        self.draw.arc(self._box(box), start, end, fill=fill, width=self._width(width))

    def line(self, points, fill, width: float) -> None:
        points = [self._point(x, y) for x, y in points]
        self.draw.line(points, fill=fill, width=self._width(width))


def _draw_face(
    draw: _Mapped, breed: Breed, fig: _Figure, base_colour: np.ndarray, rng: np.random.Generator
) -> None:
    """Eye, nose, mouth (and a cat's whiskers), drawn on the final animal picture."""
    head_x, head_y = fig.head_x, fig.head_y
    head_w, head_h = fig.head_half_width, fig.head_half_height
    cat = breed.species == 1
    flat = fig.muzzle_length == 0
    eye_x, eye_y = (head_x + head_w * 0.55, head_y - head_h * 0.05) if flat else fig.eye
    r = head_w * (0.17 if cat else 0.12) * (1.25 if flat or breed.head == "apple" else 1.0)
    iris = _EYE_COLOURS[breed.eyes]
    if rng.random() < 0.06:  # closed
        draw.arc([eye_x - r, eye_y - r * 0.6, eye_x + r, eye_y + r * 0.6], 10, 170,
                 (20, 16, 14), 2)  # fmt: skip
    else:
        draw.ellipse([eye_x - r, eye_y - r * 0.85, eye_x + r, eye_y + r * 0.85], fill=iris,
                     outline=(15, 12, 10))  # fmt: skip
        if cat:  # a slit pupil
            draw.ellipse([eye_x - r * 0.2, eye_y - r * 0.75, eye_x + r * 0.2, eye_y + r * 0.75],
                         (10, 8, 8))  # fmt: skip
        else:
            draw.ellipse([eye_x - r * 0.5, eye_y - r * 0.5, eye_x + r * 0.5, eye_y + r * 0.5],
                         (12, 9, 8))  # fmt: skip
        highlight = [eye_x + r * 0.1, eye_y - r * 0.5, eye_x + r * 0.4, eye_y - r * 0.2]
        draw.ellipse(highlight, (250, 250, 250))
    # nose and mouth
    if flat:
        nose_x, nose_y = head_x + head_w * 0.95, head_y + head_h * 0.2
    else:
        nose_x, nose_y = fig.muzzle_tip_x - 3, fig.muzzle_y - fig.muzzle_height * 0.3
    base = np.asarray(base_colour, np.float32)
    nose = tuple(int(v) for v in (0.45 * base + (110, 60, 60))) if cat else (28, 22, 22)
    size = 5 if cat else 7 + fig.muzzle_height * 0.08
    draw.ellipse([nose_x - size, nose_y - size * 0.7, nose_x + size * 0.6, nose_y + size * 0.8],
                 fill=nose)  # fmt: skip
    draw.line([(nose_x - 2, nose_y + size), (nose_x - size * 1.5, nose_y + size * 2.2)],
              fill=(40, 28, 26), width=2)  # fmt: skip
    if cat:  # whiskers
        for k in (-1, 0, 1):
            draw.line([(nose_x - 4, nose_y + 4), (nose_x + 24, nose_y + 2 + k * 7)],
                      fill=(235, 232, 225), width=1)  # fmt: skip


# ------------------------------------------------------------------ the scene


@dataclass(frozen=True)
class _SceneVariation:
    """Within-class nuisance: how hard the pictures are, not what they show."""

    animal_width: tuple[float, float] = (0.7, 0.95)  # of the image width (x the breed's size)
    max_rotation: float = 10.0  # degrees, either way
    wall_saturation: float = 0.3  # max HSV saturation of wall and floor colours
    wallpaper: float = 0.2  # probability of striped wallpaper
    clutter_shapes: tuple[int, int] = (0, 4)  # how many, [low, high)
    clutter_saturation: float = 0.5
    occluder: float = 0.05  # probability of an object in front
    noise_sigma: tuple[float, float] = (2.0, 7.0)  # of the gaussian pixel noise
    blur: float = 0.5  # probability of a mild blur
    gain: tuple[float, float] = (0.72, 1.22)  # brightness


_SCENE = _SceneVariation()


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.integers(300, 501))
    short_side = max(200, int(long_side * rng.uniform(0.6, 0.88)))
    return (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A wall (maybe papered), usually a floor, and some clutter."""
    width, height = size
    wall = _random_colour(rng, _SCENE.wall_saturation)
    image = Image.new("RGB", size, wall)
    draw = ImageDraw.Draw(image)
    if rng.random() < _SCENE.wallpaper:
        stripe = tuple(int(np.clip(c + rng.normal(0, 25), 0, 255)) for c in wall)
        step = int(rng.integers(12, 40))
        for x in range(0, width, step):
            draw.rectangle([x, 0, x + step // 2, height], fill=stripe)
    if rng.random() < 0.75:  # floor
        horizon = int(height * rng.uniform(0.45, 0.8))
        floor = _random_colour(rng, _SCENE.wall_saturation)
        draw.rectangle([0, horizon, width, height], fill=floor)
    for _ in range(int(rng.integers(*_SCENE.clutter_shapes))):
        _clutter_shape(draw, rng, size)
    return image


def _clutter_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size) -> None:
    """A rectangle, ellipse, triangle or thick line somewhere in the picture."""
    width, height = size
    s = min(width, height) * rng.uniform(0.06, 0.35)  # its size
    x, y = rng.uniform(-0.1 * width, width), rng.uniform(-0.1 * height, height)
    colour = _random_colour(rng, _SCENE.clutter_saturation)
    kind = rng.integers(4)
    if kind == 0:
        draw.rectangle([x, y, x + s * rng.uniform(0.5, 2), y + s * rng.uniform(0.5, 2)], colour)
    elif kind == 1:
        draw.ellipse([x, y, x + s, y + s * rng.uniform(0.6, 1.4)], colour)
    elif kind == 2:
        corners = [(x + s * rng.uniform(-1, 1), y + s * rng.uniform(-1, 1)) for _ in range(3)]
        draw.polygon(corners, colour)
    else:
        end = (x + s * rng.uniform(-2, 2), y + s * rng.uniform(-2, 2))
        draw.line([(x, y), end], colour, int(rng.integers(2, 9)))


def render_image(class_index: int, number: int, seed: int = 0) -> Image.Image:
    """The RGB picture for image `<CLASS_NAMES[class_index]>_<number>` under `seed`."""
    breed = BREEDS[class_index]
    rng = np.random.default_rng((seed, class_index, number))
    size = _image_size(rng)
    scene = _background(rng, size)
    width, height = size

    # the animal: mirror and rotate at shading resolution, scale into the frame, add the face
    animal, fig, base_colour = _draw_animal(breed, rng)
    bbox = animal.getchannel("A").getbbox()
    animal = animal.crop(bbox)
    flip = rng.random() < 0.5
    if flip:
        animal = animal.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-_SCENE.max_rotation, _SCENE.max_rotation)
    animal = animal.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    rotated_size = animal.size
    width_fraction = min(1.0, rng.uniform(*_SCENE.animal_width) * breed.size)
    scale = min(width * width_fraction / animal.width, 0.95 * height / animal.height)
    animal_w = max(1, int(animal.width * scale))
    animal_h = max(1, int(animal.height * scale))
    animal = animal.resize((animal_w, animal_h), Image.Resampling.BILINEAR)
    _draw_face(_Mapped(animal, bbox, flip, angle, rotated_size), breed, fig, base_colour, rng)
    x = int(rng.uniform(-0.08 * animal_w, width - 0.92 * animal_w))
    y = int(rng.uniform(-0.04 * animal_h, height - 0.96 * animal_h))

    # soft ground shadow, then the animal, then maybe an occluder in front
    shadow_w, shadow_h = max(1, int(animal_w * 0.8)), max(1, int(animal_h * 0.12))
    shadow = Image.new("L", (shadow_w + 16, shadow_h + 16), 0)
    ImageDraw.Draw(shadow).ellipse([8, 8, shadow_w + 8, shadow_h + 8],
                                   fill=int(rng.integers(40, 110)))  # fmt: skip
    shadow_x, shadow_y = int(x + animal_w * 0.1) - 8, int(y + animal_h * 0.92) - 8
    scene.paste((0, 0, 0), (shadow_x, shadow_y, shadow_x + shadow_w + 16,
                            shadow_y + shadow_h + 16), shadow.filter(ImageFilter.GaussianBlur(4)))
    scene.paste(animal, (x, y), animal)
    if rng.random() < _SCENE.occluder:  # a cushion or box edge in front, from the bottom
        top = height * rng.uniform(0.8, 0.93)
        left = rng.uniform(-0.2, 0.7) * width
        ImageDraw.Draw(scene).rounded_rectangle(
            [left, top, left + width * rng.uniform(0.3, 0.7), height + 10], 8, _random_colour(rng)
        )

    # lighting (gain and a linear ramp in a random direction), colour cast, noise, blur
    pixels = np.array(scene, np.float32)
    gain = rng.uniform(*_SCENE.gain)
    cast = 1.0 + rng.normal(0, 0.04, 3)
    direction = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    ramp = xs * np.float32(np.cos(direction)) + ys * np.float32(np.sin(direction))
    pixels *= (gain * (1.0 + rng.uniform(0, 0.45) * ramp))[..., None]
    pixels *= cast.astype(np.float32)
    pixels += np.float32(rng.uniform(*_SCENE.noise_sigma)) * _pixel_noise(rng, height, width)
    image = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), "RGB")
    if rng.random() < _SCENE.blur:
        image = image.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.0)))  # a box: 3x cheaper
    return image


# ------------------------------------------------------------------ encoding and layout


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        img.save(buf, "PNG")
    elif fmt == "png-rgba":  # transparent corners: alpha falls off outside a centred ellipse
        w, h = img.size
        alpha = Image.new("L", img.size, 0)
        ImageDraw.Draw(alpha).ellipse([-0.1 * w, -0.1 * h, 1.1 * w, 1.1 * h], fill=255)
        rgba = img.copy()
        rgba.putalpha(alpha.filter(ImageFilter.GaussianBlur(6)))
        rgba.save(buf, "PNG")
    elif fmt == "gif":
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "GIF"
        )
    elif fmt == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def _marker_text(seed: int, trainval_per_class: int, test_per_class: int) -> str:
    return (
        "SYNTHETIC data: NOT the Oxford-IIIT Pet dataset.\n"
        "Procedurally drawn cats and dogs in the Oxford-IIIT Pet layout, made by petq.synth.\n"
        f"generator_version: {GENERATOR_VERSION}\n"
        f"seed: {seed}\n"
        f"trainval_per_class: {trainval_per_class}\n"
        f"test_per_class: {test_per_class}\n"
        f"classes: {len(CLASS_NAMES)}\n"
    )


def _species_and_breed_ids() -> list[tuple[int, int]]:
    """Per class: its species and its breed id (numbered within the species, as in list.txt)."""
    counts = {1: 0, 2: 0}
    ids = []
    for breed in BREEDS:
        counts[breed.species] += 1
        ids.append((breed.species, counts[breed.species]))
    return ids


class _Planned(NamedTuple):
    """One image to write: `<CLASS_NAMES[class_index]>_<number>.jpg`, in `split`."""

    class_index: int
    number: int
    split: str
    format: str  # "jpeg", or one of the quirks' formats


def _plan(seed: int, trainval_per_class: int, test_per_class: int) -> list[_Planned]:
    """Every image, in list order (class, then number)."""
    quirks = {(CLASS_NAMES.index(name), split, rank): fmt for name, split, rank, fmt in QUIRKS}
    plan = []
    total = trainval_per_class + test_per_class
    for class_index in range(len(CLASS_NAMES)):
        order = np.random.default_rng((seed, class_index, 1 << 30)).permutation(total) + 1
        splits = {"trainval": sorted(order[:trainval_per_class].tolist()),
                  "test": sorted(order[trainval_per_class:].tolist())}  # fmt: skip
        images = [
            _Planned(class_index, number, split, quirks.get((class_index, split, rank), "jpeg"))
            for split, numbers in splits.items()
            for rank, number in enumerate(numbers)
        ]
        plan.extend(sorted(images, key=lambda image: image.number))
    return plan


def is_synthetic(root: Path | str) -> bool:
    """True when `root` holds a dataset made by this module (its SYNTHETIC marker)."""
    return (Path(root) / MARKER_NAME).is_file()


def generate(
    root: Path | str,
    *,
    trainval_per_class: int = 40,
    test_per_class: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Path:
    """Write a synthetic Oxford-IIIT-Pet-layout dataset at `root`; return `root`.

    The files are written into `<root>.partial` and renamed into place at the end,
    so an interrupted run never leaves a half dataset at `root` (a failed run removes
    its `.partial`; a stale one from a killed run is removed by the next run).
    A complete dataset already at `root` with the same parameters (same SYNTHETIC
    marker text) is kept as is; a synthetic one with other parameters is replaced.
    A non-synthetic, non-empty folder at `root` (the real dataset, say) is never
    touched: FileExistsError.

    `progress(done, total)` is called in this process as images are written (after
    each image, or each batch of a few images when working in parallel).
    `workers`: processes to draw with (default: CPU count, at most 4; 1 = in this
    process). Workers are spawned, not forked, so a caller with threads (TensorFlow,
    Streamlit) is safe; a plain script calling this needs the usual
    `if __name__ == "__main__":` guard. The bytes written do not depend on `workers`.
    """
    root = Path(root)
    if trainval_per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"need at least one image per class and split, got trainval_per_class="
            f"{trainval_per_class}, test_per_class={test_per_class}"
        )
    marker = _marker_text(seed, trainval_per_class, test_per_class)
    root.parent.mkdir(parents=True, exist_ok=True)
    # two processes asking for the demo dataset at once (two dashboard sessions, a test
    # run beside the CLI): the second waits and then finds it complete
    with FileLock(root.with_name(root.name + ".lock")):
        return _generate_locked(root, marker, seed, trainval_per_class, test_per_class,
                                progress, workers)


def _generate_locked(root: Path, marker: str, seed: int, trainval_per_class: int,
                     test_per_class: int, progress: Callable[[int, int], None] | None,
                     workers: int | None) -> Path:
    """`generate`'s work, under the dataset's lock."""
    if root.exists():
        if is_synthetic(root) and (root / MARKER_NAME).read_text(encoding="utf-8") == marker:
            return root
        if not root.is_dir() or (any(root.iterdir()) and not is_synthetic(root)):
            raise FileExistsError(f"{root}: exists and is not a synthetic dataset; not replacing")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)

    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        _write(partial, marker, seed, trainval_per_class, test_per_class, progress, workers)
        if root.exists():
            old = root.with_name(root.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            root.rename(old)
            partial.rename(root)
            shutil.rmtree(old)
        else:
            partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def _draw_batch(images: str, seed: int, batch: list[_Planned]) -> int:
    """Draw and write a batch of images into the folder `images`; runs in a worker."""
    for planned in batch:
        path = Path(images) / f"{CLASS_NAMES[planned.class_index]}_{planned.number}.jpg"
        image = render_image(planned.class_index, planned.number, seed)
        path.write_bytes(_encode(image, planned.format))
    return len(batch)


def _draw_in_pool(images: str, seed: int, batches: list, workers: int, report,
                  total: int) -> set[int]:  # fmt: skip
    """Draw `batches` in spawned processes; return the indices of those not drawn.

    Not drawn means the pool broke (a worker killed or crashed): a batch it was
    writing may have left a truncated file, which drawing it again overwrites.
    """
    left = set(range(len(batches)))
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = {pool.submit(_draw_batch, images, seed, b): i for i, b in enumerate(batches)}
        done = 0
        for future in as_completed(futures):
            done += future.result()
            left.discard(futures[future])
            report(done, total)
    except BrokenProcessPool:
        pass
    finally:  # on error, drop the queued batches and wait for the running ones
        pool.shutdown(wait=True, cancel_futures=True)
    return left


def _write(out: Path, marker: str, seed: int, n_trainval: int, n_test: int, progress,
           workers: int) -> None:  # fmt: skip
    images, ann = out / "images", out / "annotations"
    images.mkdir(parents=True)
    ann.mkdir()
    plan = _plan(seed, n_trainval, n_test)
    total = len(plan)
    report = progress or (lambda done, total: None)
    parallel = workers > 1 and total >= 64
    batches = [plan[i : i + 8] for i in range(0, total, 8)] if parallel else [[p] for p in plan]
    if parallel:
        left = _draw_in_pool(str(images), seed, batches, workers, report, total)
    else:
        left = set(range(len(batches)))
    missing = sum(len(batches[i]) for i in left)
    if parallel and left:  # a worker died (killed, out of memory): draw the rest here
        warnings.warn(
            f"a drawing process ended abruptly; drawing the remaining {missing} image(s) "
            "in this process",
            stacklevel=3,
        )
    done = total - missing
    for i in sorted(left):
        done += _draw_batch(str(images), seed, batches[i])
        report(done, total)

    ids = _species_and_breed_ids()
    lines: dict[str, list[str]] = {"all": [], "trainval": [], "test": []}
    for planned in plan:
        species, breed_id = ids[planned.class_index]
        line = (f"{CLASS_NAMES[planned.class_index]}_{planned.number} {planned.class_index + 1} "
                f"{species} {breed_id}")
        lines["all"].append(line)
        lines[planned.split].append(line)
    (ann / "list.txt").write_text("\n".join([*LIST_HEADER, *lines["all"]]) + "\n", "utf-8")
    (ann / "trainval.txt").write_text("\n".join(lines["trainval"]) + "\n", "utf-8")
    (ann / "test.txt").write_text("\n".join(lines["test"]) + "\n", "utf-8")
    (out / MARKER_NAME).write_text(marker, "utf-8")  # last: marks the folder complete
