"""What the robot's voice can say, measured: Mandarin text normalisation for espeak-ng and the share of a
prompt's characters spoken as Chinese syllables (`mandarin_coverage`).

Hub-safe (no numpy, no pyttsx3): the template editor and task creation use it to warn about prompts the
configured voice cannot say; the engine's TTS (central.dialer.tts) speaks the same normalised text.

Why the voice is `cmn-latn-pinyin`: espeak-ng 1.51's `cmn` voice ("latin as English") reads most
characters as pinyin spelled in English with English tone numbers (您 -> `(en)nI55nt'u:55`, "nin two");
`cmn-latn-pinyin` reads the same dictionary as Mandarin syllables with Chao tone contours
(您 -> `n'i35n`). bench/tts_mandarin.py measures both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_VOICES = {"zh": "cmn-latn-pinyin", "en": "en-us"}
LEGACY_ZH_VOICE = "cmn"  # the voice before issue 20 (the bench's baseline)
TARGET = 0.99  # share of characters spoken as Chinese that a zh voice must reach on the built-ins

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_COUNTED = re.compile(_HAN.pattern[:-1] + r"0-9]")
# One Mandarin syllable in espeak-ng's phoneme mnemonics: phonemes, then a tone contour (Chao digits:
# 55 35 214 51 21, 11 for the neutral tone), then pause marks. An unknown character comes out as several
# syllables (espeak spells its code) and a language switch as `(en)...(cmn)`: neither matches.
_SYLLABLE = re.compile(r"[^\d()\s_]+[1-5]{2,3}[^\d()\s_]*(?:_[|:!]*)*")
_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")

_ZH_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")
_FULLWIDTH = str.maketrans("０１２３４５６７８９：－／", "0123456789:-/")


def _year(y: str) -> str:
    return y.translate(str.maketrans("0123456789", "〇一二三四五六七八九"))  # years are read digit by digit


def speakable_zh(text: str) -> str:
    """Mandarin text as espeak-ng should read it: ISO dates -> 2026年12月3日 (year digit by digit), times
    -> 9点30分, runs of 5+ digits (phones, hotlines, case numbers) -> one Chinese digit each, 50% ->
    百分之50. Short numbers stay digits: espeak reads them as Chinese numbers (12 -> 十二)."""
    t = text.translate(_FULLWIDTH)
    t = re.sub(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)",
               lambda m: f"{_year(m[1])}年{int(m[2])}月{int(m[3])}日", t)
    t = re.sub(r"(?<!\d)(\d{4})年", lambda m: f"{_year(m[1])}年", t)

    def clock(m: re.Match[str]) -> str:
        h, mi = int(m[1]), int(m[2])
        return f"{h}点整" if mi == 0 else f"{h}点零{mi}分" if mi < 10 else f"{h}点{mi}分"

    t = re.sub(r"(?<!\d)([01]?\d|2[0-3]):([0-5]\d)(?::[0-5]\d)?(?!\d)", clock, t)
    t = re.sub(r"\d{5,}", lambda m: m[0].translate(_ZH_DIGITS), t)
    t = re.sub(r"(\d+(?:\.\d+)?)%", r"百分之\1", t)
    return re.sub(r"(\d)\.(\d)", r"\1点\2", t)


def speakable(text: str, language: str) -> str:
    return speakable_zh(text) if language == "zh" else text


@dataclass
class Coverage:
    """How much of a set of prompts a voice speaks as Chinese syllables."""

    voice: str
    chars: int = 0  # Han characters and digits, by occurrence
    spoken: int = 0
    alone: int = 0  # occurrences whose character alone is one syllable (before the whole-prompt rule)
    distinct: int = 0
    distinct_spoken: int = 0
    unspoken: dict[str, int] = field(default_factory=dict)  # character -> occurrences not spoken
    foreign_prompts: list[str] = field(default_factory=list)  # prompts whose phonemes switch language

    @property
    def share(self) -> float:
        return self.spoken / self.chars if self.chars else 1.0

    @property
    def distinct_share(self) -> float:
        return self.distinct_spoken / self.distinct if self.distinct else 1.0

    @property
    def ok(self) -> bool:
        return min(self.share, self.distinct_share) >= TARGET and not self.foreign_prompts


class VoiceUnavailable(RuntimeError):
    pass


def _espeak(voice: str, text: str) -> list[str]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceUnavailable("espeak-ng is not installed: cannot measure what the voice says")
    r = subprocess.run([exe, "-v", voice, "-x", "-q"], input=text, capture_output=True, text=True,
                       timeout=60, check=False)
    if r.returncode != 0 or "not found" in r.stderr.lower():
        raise VoiceUnavailable(f"espeak-ng voice {voice!r}: {r.stderr.strip()[:200] or r.returncode}")
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


@lru_cache(maxsize=64)
def _char_table(voice: str, chars: tuple[str, ...]) -> dict[str, bool]:
    """Per character: does it alone synthesise to exactly one Mandarin syllable with a tone contour and no
    language switch? One espeak run, a character per line (a line holds no clause break, so one line of
    phonemes each); if the lines do not pair up, one run per character."""
    lines = _espeak(voice, "\n".join(chars) + "\n")
    if len(lines) != len(chars):
        lines = [" ".join(_espeak(voice, c + "\n")) for c in chars]
    return {c: bool(_SYLLABLE.fullmatch(ph)) for c, ph in zip(chars, lines, strict=True)}


@lru_cache(maxsize=4096)
def _switches_language(voice: str, text: str) -> bool:
    return any(_SWITCH.search(ln) for ln in _espeak(voice, text.replace("\n", " ") + "\n"))


def mandarin_coverage(prompts: Iterable[str], voice: str | None = None) -> Coverage:
    """The share of the prompts' Han characters and digits (after `speakable_zh`) that `voice` speaks as
    Mandarin syllables, by occurrence and by distinct character. A character counts when it alone yields
    one syllable with a tone contour and no `(xx)` language switch; every character of a prompt whose
    whole phoneme string switches language counts as not spoken. Raises VoiceUnavailable without espeak-ng."""
    v = voice or DEFAULT_VOICES["zh"]
    texts = [speakable_zh(p) for p in prompts if p and p.strip()]
    counts: Counter[str] = Counter(c for t in texts for c in _COUNTED.findall(t))
    table = _char_table(v, tuple(sorted(counts))) if counts else {}
    cov = Coverage(voice=v, chars=sum(counts.values()), distinct=len(counts))
    foreign: Counter[str] = Counter()
    for t in texts:
        if _COUNTED.search(t) and _switches_language(v, t):
            cov.foreign_prompts.append(t)
            foreign.update(_COUNTED.findall(t))
    bad_distinct = set()
    for c, n in counts.items():
        cov.alone += n if table[c] else 0
        lost = n if not table[c] else foreign[c]
        cov.spoken += n - lost
        if lost:
            cov.unspoken[c] = lost
            bad_distinct.add(c)
    cov.distinct_spoken = cov.distinct - len(bad_distinct)
    return cov
