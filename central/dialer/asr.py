"""ASR behind one small interface, chosen per template language. Backends:
- vosk: the engine for operator-supplied models: a model directory per language (`--asr-model
  zh=/srv/vosk-model-small-cn-0.22`). Nothing is ever downloaded at run time; the vosk wheel ships none.
- pocketsphinx: its wheel ships only an en-US model (acoustic model, cmudict, LM): English only.

A language with no model gets no recogniser (`Recognisers.for_language` answers None): its calls are
DTMF-only and speech is never pushed through another language's model (issue 20: Chinese "不是" heard by
the English model as "ok" and recorded as yes).

Each answer window passes the node's expected phrases: both backends decode against that small grammar
(JSGF for pocketsphinx, a phrase list for vosk). A result is a `Recognition`: the text (a str, so the
engine's CDR and transcript keep it) with a confidence, and `accepted` only when the confidence reaches
`min_confidence` and the text is exactly one of the grammar's phrases. Anything else is a no-match for
the dialog, never an answer.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from central.dialer.audio import resample

MIN_CONFIDENCE = 0.6  # lowest word posterior accepted; espeak "yes"/"no" over SIP score ~0.6-0.95
# Garbage words: a small grammar must explain every sound with one of its phrases, so speech outside it
# (another language, chatter) lands on the nearest answer with a high posterior (Chinese 没有 heard as
# "i do" at 0.72). Short common words beside the phrases give such speech somewhere else to land; a filler
# is never an answer. bench/asr_reject.py: non-answers (Chinese, a held-out Chinese set, chatter) accepted 10/63
# -> 2/63, English answers accepted 32/64 -> 22/64 (a re-ask, then keys): a guess costs more than a re-ask.
FILLERS = ("the", "a", "and", "oh", "uh", "um", "ah", "hmm", "huh", "well", "what", "who", "he", "she", "it",
           "is", "we", "you", "me", "or", "that", "hi", "way", "may", "bay", "true", "ha", "two")
LANGUAGES = ("zh", "en")


class Recognition(str):
    """Recognised text with its confidence (the lowest word score) and whether it may be used as an answer."""

    confidence: float
    accepted: bool

    def __new__(cls, text: str, confidence: float = 0.0, accepted: bool = False) -> Recognition:
        r = super().__new__(cls, text)
        r.confidence, r.accepted = confidence, accepted and bool(text)
        return r


class Recogniser(Protocol):
    name: str
    language: str

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> Recognition: ...


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class PocketsphinxRecogniser:
    name = "pocketsphinx"
    language = "en"  # the only model the wheel ships (pocketsphinx/model/en-us)
    RATE = 16000

    def __init__(self, min_confidence: float = MIN_CONFIDENCE, fillers: tuple[str, ...] = FILLERS) -> None:
        self.min_confidence = min_confidence
        self.fillers = fillers
        self._local = threading.local()  # a Decoder is not thread-safe; one per worker thread

    def _decoder(self):  # type: ignore[no-untyped-def]
        d = getattr(self._local, "d", None)
        if d is None:
            from pocketsphinx import Decoder

            d = Decoder(samprate=self.RATE, loglevel="FATAL")
            self._local.d = d
            self._local.lm = d.current_search()  # the bundled en-US LM: open dictation
            self._local.grammars = {}
        return d

    def _grammar(self, phrases: list[str]) -> tuple[str | None, set[str]]:
        d = self._decoder()
        usable = []
        for p in phrases:
            words = re.findall(r"[a-z']+", p.lower())
            if words and " ".join(words) == _norm(p) and all(d.lookup_word(w) is not None for w in words):
                usable.append(" ".join(words))
        usable = sorted(set(usable))
        if not usable:
            return None, set()
        in_phrases = {w for p in usable for w in p.split()}
        garbage = [f for f in self.fillers if f not in in_phrases and d.lookup_word(f) is not None]
        key = "g" + str(abs(hash((tuple(usable), tuple(garbage)))))
        if key not in self._local.grammars:
            d.add_jsgf_string(key, "#JSGF V1.0;\ngrammar g;\npublic <s> = " + " | ".join(usable + garbage) + ";\n")
            self._local.grammars[key] = True
        return key, set(usable)

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> Recognition:
        d = self._decoder()
        search, grammar = self._grammar(phrases) if phrases else (None, set())
        if phrases and search is None:
            return Recognition("", 0.0)  # no expected phrase is English: nothing this model can hear
        d.activate_search(search or self._local.lm)
        d.start_utt()
        d.process_raw(resample(samples, rate, self.RATE).tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = hyp.hypstr.strip() if hyp else ""
        words = [s.prob for s in d.seg() if s.word not in ("<s>", "</s>", "<sil>") and not s.word.startswith("[")]
        conf = min(words) if words and text else 0.0
        ok = conf >= self.min_confidence and (not phrases or _norm(text) in grammar)
        return Recognition(text, conf, ok)


class VoskRecogniser:
    name = "vosk"

    def __init__(self, model_dir: Path, language: str = "zh", min_confidence: float = MIN_CONFIDENCE) -> None:
        check_vosk_model(model_dir, language)
        from vosk import Model, SetLogLevel

        SetLogLevel(-1)
        try:
            self.model = Model(str(model_dir))
        except Exception as e:  # noqa: BLE001  vosk raises a bare Exception("Failed to create a model")
            raise ValueError(f"asr.model.{language}: vosk could not load {model_dir} ({e})") from e
        self.language = language
        self.min_confidence = min_confidence

    def recognise(self, samples: np.ndarray, rate: int, phrases: list[str] | None = None) -> Recognition:
        from vosk import KaldiRecognizer

        grammar = {_norm(p) for p in phrases or [] if p.strip()}
        rec = KaldiRecognizer(self.model, rate, json.dumps([*sorted(grammar), "[unk]"])) if grammar else \
            KaldiRecognizer(self.model, rate)
        rec.SetWords(True)
        rec.AcceptWaveform(samples.astype(np.int16).tobytes())
        res = json.loads(rec.FinalResult())
        words = [w for w in res.get("result", []) if w.get("word") != "[unk]"]
        text = " ".join(w["word"] for w in words)
        conf = min((float(w.get("conf", 0.0)) for w in words), default=0.0)
        unk = any(w.get("word") == "[unk]" for w in res.get("result", []))
        # vosk's Chinese models return words space-separated: compare without spaces too
        exact = not grammar or _norm(text) in grammar or text.replace(" ", "") in {g.replace(" ", "") for g in grammar}
        return Recognition(text, conf, conf >= self.min_confidence and exact and not unk)


def check_vosk_model(model_dir: Path, language: str) -> None:
    """Refuse, naming the setting, a directory that is not a vosk model (am/ + conf/ of a Kaldi model)."""
    where = f"asr.model.{language}"
    if not model_dir.is_dir():
        raise ValueError(f"{where}: {model_dir} is not a directory")
    missing = [p for p in ("am/final.mdl", "conf/mfcc.conf") if not (model_dir / p).is_file()]
    if missing:
        raise ValueError(f"{where}: {model_dir} is not a vosk model directory (missing {', '.join(missing)})")


def parse_models(specs: list[str] | None) -> dict[str, Path]:
    """`--asr-model zh=/path` options -> {"zh": Path}; refuses unknown languages and repeats."""
    out: dict[str, Path] = {}
    for spec in specs or []:
        lang, sep, path = spec.partition("=")
        lang = lang.strip()
        if not sep or not path.strip():
            raise ValueError(f"asr.model: {spec!r} is not LANG=DIRECTORY (e.g. zh=/srv/vosk-model-small-cn)")
        if lang not in LANGUAGES:
            raise ValueError(f"asr.model: unknown language {lang!r} ({' | '.join(LANGUAGES)})")
        if lang in out:
            raise ValueError(f"asr.model.{lang}: given twice")
        out[lang] = Path(path.strip())
    return out


class Recognisers:
    """One recogniser per template language, None where no model is installed (DTMF only)."""

    def __init__(self, by_language: Mapping[str, Recogniser]) -> None:
        self.by_language = dict(by_language)

    def for_language(self, language: str) -> Recogniser | None:
        return self.by_language.get(language)

    def missing(self) -> list[str]:
        return [lang for lang in LANGUAGES if lang not in self.by_language]


def make_recognisers(backend: str = "pocketsphinx", models: Mapping[str, Path] | None = None,
                     min_confidence: float = MIN_CONFIDENCE, model_dir: Path | None = None) -> Recognisers:
    """vosk for each operator-supplied model directory; pocketsphinx's bundled en-US model for English
    when no vosk model covers it (unless the backend is "vosk" only). `model_dir` (the older single
    `--vosk-model`) counts as the zh model."""
    if backend not in ("vosk", "pocketsphinx"):
        raise ValueError(f"asr.backend: unknown backend {backend!r} (vosk | pocketsphinx)")
    models = dict(models or {})
    if model_dir is not None:
        models.setdefault("zh", model_dir)
    by: dict[str, Recogniser] = {lang: VoskRecogniser(p, lang, min_confidence) for lang, p in models.items()}
    if "en" not in by and backend == "pocketsphinx":
        by["en"] = PocketsphinxRecogniser(min_confidence)
    return Recognisers(by)


def make_recogniser(backend: str, model_dir: Path | None = None) -> Recogniser:
    """One recogniser (kept for callers that pick a backend themselves)."""
    if backend == "vosk":
        if model_dir is None:
            raise ValueError("asr.model_dir: vosk needs a model directory")
        return VoskRecogniser(model_dir)
    if backend == "pocketsphinx":
        return PocketsphinxRecogniser()
    raise ValueError(f"asr.backend: unknown backend {backend!r} (vosk | pocketsphinx)")
