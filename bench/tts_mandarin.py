"""How much of the built-in Mandarin prompts the robot's voice speaks as Chinese (issue 20, point 3).

Every prompt, no-match and silence prompt of every built-in template (rendered with sample variables, as
the calls render them, with the DTMF-only key hints a call without a Chinese ASR model adds), plus sample
notices carrying a date, a time and phone digits, measured by central.dialer.voice.mandarin_coverage from
espeak-ng's phoneme output (`espeak-ng -v VOICE -x -q`): a character counts when it alone is one Mandarin
syllable with a tone contour, and its prompt as a whole switches to no other language.

The old voice `cmn` is the baseline, the configured zh voice the measured value (share by occurrence).
Not a timing: a measurement. Last stdout line: one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from central.dialer.dialog import tts_texts  # noqa: E402
from central.dialer.templates import builtin_templates  # noqa: E402
from central.dialer.voice import DEFAULT_VOICES, LEGACY_ZH_VOICE, TARGET, mandarin_coverage  # noqa: E402

SAMPLE = {"name": "王先生", "notice": "2026-12-03 09:30至18:00停水，咨询电话12345或13800138000。",
          "date": "2026-12-03", "time": "14:05", "phone": "13800138000"}


def prompts() -> list[str]:
    out: list[str] = []
    for t in builtin_templates():
        if t.language == "zh":
            out += tts_texts(t, SAMPLE, dtmf_only=True)
    return list(dict.fromkeys(out))


def main() -> None:
    texts = prompts()
    voice = DEFAULT_VOICES["zh"]
    old, new = mandarin_coverage(texts, LEGACY_ZH_VOICE), mandarin_coverage(texts, voice)
    print(f"{len(texts)} prompts of {len(builtin_templates())} built-in templates; "
          f"{new.chars} Han characters/digits, {new.distinct} distinct")
    for c in (old, new):
        print(f"{c.voice:>16}: by occurrence {c.spoken}/{c.chars} = {c.share:.2%} "
              f"(alone {c.alone}/{c.chars}), by distinct character {c.distinct_spoken}/{c.distinct} = "
              f"{c.distinct_share:.2%}; prompts switching language: {len(c.foreign_prompts)}/{len(texts)}")
        if c.unspoken and c is new:
            print("  not spoken:", "".join(sorted(c.unspoken)))
    print(json.dumps({"metric": f"mandarin_coverage[{voice}]", "value": round(new.share, 4), "unit": "share",
                      "target": TARGET, "baseline": round(old.share, 4),
                      "ratio": round(new.share / old.share, 2) if old.share else None}))


if __name__ == "__main__":
    main()
