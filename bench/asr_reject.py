"""Out-of-grammar rejection of the English recogniser (issue 20: never guess an answer).

Speech that is not an answer (Chinese answers, a held-out Chinese set, English chatter) and English
answers, synthesised by espeak-ng at 16 kHz and through an 8 kHz phone band, are recognised against the
survey template's first question, with the garbage words (central/dialer/asr.FILLERS) and without them
(the baseline, same run). Metric: out-of-grammar utterances accepted as an answer (lower is better);
also printed: English answers accepted.

    ./run bench asr_reject
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from central.dialer.asr import PocketsphinxRecogniser  # noqa: E402
from central.dialer.audio import read_wav, resample  # noqa: E402
from central.dialer.dialog import Dialog  # noqa: E402
from central.dialer.templates import Template  # noqa: E402

ENGLISH = ["yes", "no", "yeah", "sure", "i do", "okay", "correct", "nope", "never", "not", "negative", "don't",
           "right", "confirm", "yep", "ok"]
CHINESE = ["不是", "没有", "是的", "好的", "我不知道", "对", "不要", "可以", "不行", "嗯", "不需要", "没问题", "同意",
           "不同意"]
HELD_OUT = ["谢谢", "你好", "我在开车", "等一下", "什么", "喂", "我是", "没空", "好吧", "算了", "你是谁", "不知道",
            "可能", "随便", "以后再说"]
CHATTER = ["the weather is nice today", "hello who is this", "what", "who are you", "call me later"]


def main() -> None:
    tpl = Template.from_yaml((ROOT / "tests/dialer/assets/survey_en.yaml").read_text())
    listen = Dialog(tpl, {"name": "Li"}).start().listen
    assert listen is not None
    tmp = Path(tempfile.mkdtemp())
    n = iter(range(10**6))

    def clip(text: str, voice: str, rate: int) -> tuple:
        p = tmp / f"{next(n)}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(p), text], check=True, capture_output=True)
        s, r = read_wav(p)
        if rate != r:
            s, r = resample(resample(s, r, rate), rate, 16000), 16000
        return s, r

    sets = {
        "english": [clip(t, v, r) for t in ENGLISH for v in ("en-us", "en-gb") for r in (16000, 8000)],
        "chinese": [clip(t, "cmn-latn-pinyin", r) for t in CHINESE for r in (16000, 8000)],
        "held_out": [clip(t, "cmn-latn-pinyin", r) for t in HELD_OUT for r in (16000, 8000)],
        "chatter": [clip(t, "en-us", 16000) for t in CHATTER],
    }
    out: dict[str, dict[str, int]] = {}
    for name, rec in (("fillers", PocketsphinxRecogniser()), ("bare", PocketsphinxRecogniser(fillers=()))):
        out[name] = {k: sum(rec.recognise(s, r, listen.phrases).accepted for s, r in v) for k, v in sets.items()}
    total = {k: len(v) for k, v in sets.items()}
    for name, got in out.items():
        print(f"{name:8} " + "  ".join(f"{k} accepted {got[k]}/{total[k]}" for k in sets))
    oog = lambda g: g["chinese"] + g["held_out"] + g["chatter"]  # noqa: E731
    value, base = oog(out["fillers"]), oog(out["bare"])
    print(json.dumps({"metric": "asr_out_of_grammar_accepted", "value": value, "unit": "utterances",
                      "target": 0, "baseline": base, "ratio": round(value / base, 3) if base else None,
                      "of": total["chinese"] + total["held_out"] + total["chatter"],
                      "english_accepted": out["fillers"]["english"],
                      "english_accepted_baseline": out["bare"]["english"], "english_of": total["english"]}))


if __name__ == "__main__":
    main()
