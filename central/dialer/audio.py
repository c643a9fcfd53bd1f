"""PCM/WAV helpers shared by TTS, ASR and the SIP engine: 16-bit mono PCM only (what pjsua2's WAV
player and recorder speak), resampling with numpy, and an energy endpointer for answer windows."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAME_MS = 20


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples (int16) and rate of a mono 16-bit WAV; stereo is mixed down."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        return data, w.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Linear-interpolation resampling: plenty for telephone-band speech into ASR/G.711."""
    if src == dst or len(samples) == 0:
        return samples.astype(np.int16)
    n = round(len(samples) * dst / src)
    x = np.linspace(0, len(samples) - 1, n)
    return np.interp(x, np.arange(len(samples)), samples.astype(np.float32)).astype(np.int16)


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def frame_rms(samples: np.ndarray, rate: int) -> np.ndarray:
    n = rate * FRAME_MS // 1000
    usable = len(samples) // n * n
    if usable == 0:
        return np.zeros(0)
    fr = samples[:usable].reshape(-1, n).astype(np.float32)
    return np.sqrt((fr * fr).mean(axis=1))


@dataclass
class Endpointer:
    """Finds one spoken answer in a stream of frames: speech starts after `min_speech_ms` of loud frames
    and ends after `end_silence_ms` of quiet ones. Fixed threshold: a SIP call with a null sound device
    has no room noise, and comfort noise sits far below speech (rms ~3 vs hundreds)."""

    threshold: float = 200.0
    min_speech_ms: int = 60
    end_silence_ms: int = 600
    loud: int = 0
    quiet: int = 0
    started_at: int | None = None  # frame index of speech onset
    ended_at: int | None = None
    frames: int = 0

    def feed(self, rms: np.ndarray) -> None:
        for v in rms:
            self.frames += 1
            if self.ended_at is not None:
                return
            if v >= self.threshold:
                self.loud += 1
                self.quiet = 0
                if self.started_at is None and self.loud * FRAME_MS >= self.min_speech_ms:
                    self.started_at = self.frames - self.loud
            else:
                self.quiet += 1
                if self.started_at is None:
                    self.loud = 0
                elif self.quiet * FRAME_MS >= self.end_silence_ms:
                    self.ended_at = self.frames - self.quiet

    @property
    def speaking(self) -> bool:
        return self.started_at is not None and self.ended_at is None

    @property
    def done(self) -> bool:
        return self.ended_at is not None


class GrowingWav:
    """Reads the samples a pjsua2 recorder has flushed so far. pjmedia writes the WAV header with a
    placeholder size and appends as it goes, so the data chunk can be tailed while the call runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset: int | None = None  # byte offset of the data chunk
        self.pos = 0  # bytes of data consumed

    def _data_offset(self) -> int | None:
        try:
            head = self.path.read_bytes()[:256]
        except FileNotFoundError:
            return None
        i = head.find(b"data")
        return None if i < 0 else i + 8

    def read_new(self) -> np.ndarray:
        if self.offset is None:
            self.offset = self._data_offset()
            if self.offset is None:
                return np.zeros(0, dtype=np.int16)
        with open(self.path, "rb") as f:
            f.seek(self.offset + self.pos)
            raw = f.read()
        raw = raw[: len(raw) // 2 * 2]
        self.pos += len(raw)
        return np.frombuffer(raw, dtype=np.int16)
