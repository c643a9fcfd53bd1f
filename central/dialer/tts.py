"""TTS: pyttsx3 over espeak-ng (Mandarin `cmn-latn-pinyin` and English voices) to 16-bit mono WAV at the
SIP clock rate, cached on disk per (voice, rate, text) so a campaign synthesises each prompt once. Text is
normalised first (central.dialer.voice.speakable: dates, times, phone digits read in Chinese), and
`mandarin_coverage` measures what a voice says (bench/tts_mandarin.py, tests/dialer/test_voice_tts.py)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from central.dialer.audio import frame_rms, read_wav, resample, write_wav
from central.dialer.voice import DEFAULT_VOICES, mandarin_coverage, speakable

__all__ = ["DEFAULT_VOICES", "Tts", "TtsError", "mandarin_coverage", "trim_silence"]
_lock = threading.Lock()  # pyttsx3 drives one espeak instance per process: serialise it


class TtsError(RuntimeError):
    pass


def trim_silence(samples: np.ndarray, rate: int, keep_ms: int = 80, threshold: float = 100.0) -> np.ndarray:
    """espeak pads ~0.4 s of silence at the end; the robot would listen late and miss a quick answer."""
    rms = frame_rms(samples, rate)
    loud = np.nonzero(rms > threshold)[0]
    if len(loud) == 0:
        return samples
    n = rate * 20 // 1000
    keep = rate * keep_ms // 1000
    return samples[max(0, loud[0] * n - keep): min(len(samples), (loud[-1] + 1) * n + keep)]


class Tts:
    def __init__(self, cache_dir: Path, rate_hz: int = 16000, words_per_minute: int = 160) -> None:
        self.cache_dir = cache_dir
        self.rate_hz = rate_hz
        self.wpm = words_per_minute
        self._engine: object | None = None

    def voice_for(self, language: str, voice: str | None = None) -> str:
        return voice or DEFAULT_VOICES.get(language, "en-us")

    def wav(self, text: str, language: str = "zh", voice: str | None = None) -> Path:
        """The cached WAV for `text` (synthesised on first use)."""
        if not text.strip():
            raise TtsError("text: empty prompt")
        v = self.voice_for(language, voice)
        text = speakable(text, language)
        key = hashlib.sha256(f"trim\x00{v}\x00{self.wpm}\x00{self.rate_hz}\x00{text}".encode()).hexdigest()[:32]
        out = self.cache_dir / f"{key}.wav"
        if out.exists():
            return out
        with _lock:
            if out.exists():
                return out
            with tempfile.TemporaryDirectory() as td:
                raw = Path(td) / "raw.wav"
                self._synth(text, v, raw)
                samples, rate = read_wav(raw)
                write_wav(out, trim_silence(resample(samples, rate, self.rate_hz), self.rate_hz), self.rate_hz)
        return out

    def _synth(self, text: str, voice: str, out: Path) -> None:
        try:
            import pyttsx3

            if self._engine is None:
                self._engine = pyttsx3.init("espeak")
            eng = self._engine
            ids = {vo.id.rsplit("/", 1)[-1].lower(): vo.id for vo in eng.getProperty("voices")}  # type: ignore[attr-defined]
            eng.setProperty("voice", ids.get(voice.lower(), voice))  # type: ignore[attr-defined]
            eng.setProperty("rate", self.wpm)  # type: ignore[attr-defined]
            # One file per runAndWait: pyttsx3's espeak driver keeps only the last of queued saves.
            eng.save_to_file(text, str(out))  # type: ignore[attr-defined]
            eng.runAndWait()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001  pyttsx3 can fail to load its driver; espeak-ng's CLI is the same voice
            out.unlink(missing_ok=True)
        if out.exists() and out.stat().st_size > 44:
            return
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise TtsError("neither pyttsx3 nor espeak-ng could synthesise speech")
        subprocess.run([exe, "-v", voice, "-s", str(self.wpm), "-w", str(out), text], check=True,
                       capture_output=True, timeout=60)
