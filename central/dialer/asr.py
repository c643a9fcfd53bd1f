"""ASR behind one small interface. Backends:
- vosk: the production one; an operator installs a model directory (e.g. vosk-model-small-cn) and sets
  it in the dialer config. Nothing is ever downloaded at run time.
- pocketsphinx: its wheel ships an en-US model, so demos and tests recognise real speech offline.

Each answer window passes the node's expected phrases: both backends then decode against that small
grammar (JSGF for pocketsphinx, a phrase list for vosk), which is far more robust on telephone audio
than open dictation; with no usable phrases they fall back to open dictation.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from central.dialer.audio import resample


class Recogniser(Protocol):
    name: str

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> str: ...


class PocketsphinxRecogniser:
    name = "pocketsphinx"
    RATE = 16000

    def __init__(self) -> None:
        self._local = threading.local()  # a Decoder is not thread-safe; one per worker thread

    def _decoder(self):  # type: ignore[no-untyped-def]
        d = getattr(self._local, "d", None)
        if d is None:
            from pocketsphinx import Decoder

            d = Decoder(samprate=self.RATE, loglevel="FATAL")
            self._local.d = d
            self._local.grammars = {}
        return d

    def _grammar(self, phrases: list[str]) -> str | None:
        d = self._decoder()
        usable = []
        for p in phrases:
            words = re.findall(r"[a-z']+", p.lower())
            if words and all(d.lookup_word(w) is not None for w in words):
                usable.append(" ".join(words))
        usable = sorted(set(usable))
        if not usable:
            return None
        key = "g" + str(abs(hash(tuple(usable))))
        if key not in self._local.grammars:
            d.add_jsgf_string(key, "#JSGF V1.0;\ngrammar g;\npublic <s> = " + " | ".join(usable) + ";\n")
            self._local.grammars[key] = True
        return key

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> str:
        d = self._decoder()
        search = self._grammar(phrases) if phrases else None
        d.activate_search(search or "_lm")
        d.start_utt()
        d.process_raw(resample(samples, rate, self.RATE).tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp else ""


class VoskRecogniser:
    name = "vosk"

    def __init__(self, model_dir: Path) -> None:
        if not (model_dir / "am").exists() and not (model_dir / "conf").exists():
            raise FileNotFoundError(f"vosk model_dir {model_dir} is not a vosk model directory")
        from vosk import Model, SetLogLevel

        SetLogLevel(-1)
        self.model = Model(str(model_dir))

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> str:
        from vosk import KaldiRecognizer

        rec = KaldiRecognizer(self.model, rate, json.dumps([*phrases, "[unk]"])) if phrases else \
            KaldiRecognizer(self.model, rate)
        rec.AcceptWaveform(samples.astype(np.int16).tobytes())
        text = json.loads(rec.FinalResult()).get("text", "")
        return " ".join(w for w in text.split() if w != "[unk]")


def make_recogniser(backend: str, model_dir: Path | None = None) -> Recogniser:
    if backend == "vosk":
        if model_dir is None:
            raise ValueError("asr.model_dir: vosk needs a model directory")
        return VoskRecogniser(model_dir)
    if backend == "pocketsphinx":
        return PocketsphinxRecogniser()
    raise ValueError(f"asr.backend: unknown backend {backend!r} (vosk | pocketsphinx)")
