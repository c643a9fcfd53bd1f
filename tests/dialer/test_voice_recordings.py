"""Recordings per node and per language, from the template's own media store only (issue 20, points 3
and 5): upload/list/fetch/delete over the API, real WAV checks and conversion, 422 naming the node for a
path or an unknown recording, per-language choice with TTS fallback, copies keep their recordings."""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path

from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.dialer.dialog import Dialog
from central.dialer.templates import Template
from central.hub import Hub
from tests.helpers import auth, token_for

API = "/api/v1/dialer"


def tone_wav(rate: int = 8000, channels: int = 2, seconds: float = 0.5) -> bytes:
    n = int(rate * seconds)
    frames = b"".join(struct.pack("<" + "h" * channels, *[int(8000 * math.sin(i / 5))] * channels)
                      for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def notice_copy(client: TestClient, h: dict[str, str], key: str = "my-notice") -> dict:
    r = client.post(f"{API}/templates/notice/copy", json={"new_key": key, "org": "/city/district-a"}, headers=h)
    assert r.status_code == 201, r.text
    return client.get(f"{API}/templates/{key}", headers=h).json()["template"]


def test_upload_list_fetch_use_copy_delete(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    body = notice_copy(client, h)
    r = client.put(f"{API}/templates/my-notice/recordings/greet", content=tone_wav(), headers=h)
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["language"] == "zh" and up["rate"] == 16000 and up["key"].startswith("prompts/")
    assert abs(up["duration_s"] - 0.5) < 0.01 and up["version"] == 2
    listed = client.get(f"{API}/templates/my-notice/recordings", headers=h).json()
    assert [(x["name"], x["language"]) for x in listed] == [("greet", "zh")]
    got = client.get(f"{API}/templates/my-notice/recordings/greet", headers=h)
    assert got.status_code == 200 and got.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(got.content)) as w:  # converted: mono, 16-bit, 16 kHz
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)

    # a node may name it (whole prompt) and mix it with TTS ([[name]] segments)
    body["nodes"][0]["prompt"] = "[[greet]]{name}，{notice}"
    body["nodes"][1]["audio"] = "greet"
    r = client.post(f"{API}/templates", json={"org": "/city/district-a", "template": body}, headers=h)
    assert r.status_code == 201, r.text
    tpl, _ = svc.get_template(hub, "my-notice")
    assert tpl.recordings["greet"]["zh"].sha256 == up["sha256"]  # the store's index, not the body's
    d = Dialog(tpl.bind_media(svc.media(hub).root), {"name": "李女士", "notice": "明天停水。"})
    step = d.start()
    first, name, confirm = step.prompts[0], step.prompts[1], step.prompts[-1]
    assert first.audio and Path(first.audio).is_file() and first.audio.endswith(up["key"])
    assert name.audio is None and name.text == "李女士，明天停水。"
    assert confirm.audio == first.audio and confirm.text.startswith("您是否已知晓")
    Path(first.audio).write_bytes(tone_wav())  # changed on disk: never played
    assert Dialog(tpl, {}).start().prompts[0].audio.endswith(".unverified")

    # per language: an en recording of the same name is not played by a zh template
    r = client.put(f"{API}/templates/my-notice/recordings/greet?language=en", content=tone_wav(16000, 1), headers=h)
    assert r.status_code == 200 and r.json()["language"] == "en"
    tpl, _ = svc.get_template(hub, "my-notice")
    assert tpl.recording_path("greet").endswith(up["key"])
    en = tpl.model_copy(update={"language": "en"})
    assert en.recording_path("greet").endswith(r.json()["key"])

    # copying copies the recordings
    r = client.post(f"{API}/templates/my-notice/copy", json={"new_key": "my-notice-2", "org": "/city/district-a"},
                    headers=h)
    assert r.status_code == 201
    assert len(client.get(f"{API}/templates/my-notice-2/recordings", headers=h).json()) == 2

    # deleting one a node still needs is refused; the en one can go
    r = client.delete(f"{API}/templates/my-notice/recordings/greet", headers=h)
    assert r.status_code == 409 and r.json()["field"].startswith("nodes[")
    r = client.delete(f"{API}/templates/my-notice/recordings/greet?language=en", headers=h)
    assert r.status_code == 200
    assert [x["language"] for x in client.get(f"{API}/templates/my-notice/recordings", headers=h).json()] == ["zh"]


def test_audio_is_a_name_in_the_store_never_a_path(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    body = notice_copy(client, h)
    for audio, field in [("/etc/passwd", "nodes[confirm].audio"), ("../../x.wav", "nodes[confirm].audio"),
                         ("not-uploaded", "nodes[confirm].audio")]:
        body["nodes"][1]["audio"] = audio
        r = client.post(f"{API}/templates", json={"org": "/city/district-a", "template": body}, headers=h)
        assert r.status_code == 422 and field in r.text, (audio, r.text)
    body["nodes"][1]["audio"] = None
    body["nodes"][0]["prompt"] = "[[intro]]{notice}"  # a segment has no text to fall back on
    r = client.post(f"{API}/templates", json={"org": "/city/district-a", "template": body}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "nodes[notice].prompt"
    # a body cannot smuggle a store entry in (e.g. another call's recording): the server keeps the index
    body["nodes"][0]["prompt"] = "{notice}"
    body["nodes"][1]["audio"] = "stolen"
    body["recordings"] = {"stolen": {"zh": {"key": "prompts/2025/01/01/" + "a" * 64 + ".wav", "sha256": "a" * 64,
                                            "duration_s": 1.0, "rate": 16000, "uploaded_at": "2025-01-01"}}}
    r = client.post(f"{API}/templates", json={"org": "/city/district-a", "template": body}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "nodes[confirm].audio"


def test_bad_uploads_name_the_field(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    notice_copy(client, h)
    url = f"{API}/templates/my-notice/recordings/greet"
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:  # 32-bit
        w.setnchannels(1)
        w.setsampwidth(4)
        w.setframerate(16000)
        w.writeframes(b"\0" * 64000)
    for data in [b"", b"RIFF....WAVEfmt nonsense", Path("/etc/hostname").read_bytes(), buf.getvalue(),
                 tone_wav(96000, 1), tone_wav(8000, 1, 0.05), tone_wav(8000, 1, 61)]:
        r = client.put(url, content=data, headers=h)
        assert r.status_code == 422 and r.json()["field"] == "body", r.text
    assert client.put(f"{API}/templates/my-notice/recordings/Bad Name", content=tone_wav(), headers=h).status_code \
        == 422
    assert client.put(f"{API}/templates/my-notice/recordings/x?language=fr", content=tone_wav(),
                      headers=h).status_code == 422
    assert client.put(f"{API}/templates/notice/recordings/x", content=tone_wav(), headers=h).status_code in (403, 409)
    other = auth(token_for(hub, "bob", role="district_admin", org="/city/district-b"))
    assert client.put(url, content=tone_wav(), headers=other).status_code in (403, 404)
    assert client.get(f"{API}/templates/my-notice/recordings/none", headers=h).status_code == 404


def test_task_creation_warns_when_calls_are_dtmf_only(client: TestClient, hub: Hub) -> None:
    h = auth(token_for(hub, "ann", role="district_admin", org="/city/district-a"))
    r = client.post(f"{API}/tasks", json={"name": "t", "org": "/city/district-a", "template_key": "questionnaire"},
                    headers=h)
    assert r.status_code == 201, r.text
    w = r.json()["warnings"]
    assert any("DTMF only" in x for x in w) and any(x.startswith("nodes[q3]") for x in w)
    assert not any(x.startswith("template.voice") for x in w)  # the voice says every prompt
    svc.save_template(hub, Template.from_yaml((Path(__file__).parent / "assets" / "survey_en.yaml").read_text()),
                      "/city/district-a", "ann")
    r = client.post(f"{API}/tasks", json={"name": "e", "org": "/city/district-a", "template_key": "e2e-survey"},
                    headers=h)
    assert r.status_code == 201 and r.json()["warnings"] == []  # en: the bundled model hears it
