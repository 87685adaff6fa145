"""The HTTP service (audioclf.serving): endpoints, answers equal to ``Classifier.predict``, limits and error
answers, micro-batching, temp-file hygiene, and staying up after bad requests."""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FSDD_CLIPS, FSDD_LABELS, write_with_pyav
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

import warnings  # noqa: E402

with warnings.catch_warnings():  # starlette's "use httpx2" notice: httpx is what the project installs
    warnings.simplefilter("ignore", UserWarning)  # StarletteDeprecationWarning is a UserWarning
    from fastapi.testclient import TestClient  # noqa: E402

from audioclf.audio import read_audio  # noqa: E402
from audioclf.data.windows import window_starts  # noqa: E402
from audioclf.inference import load  # noqa: E402
from audioclf.serving import create_app  # noqa: E402
from audioclf.serving import app as serving_app  # noqa: E402
from audioclf.serving import uploads  # noqa: E402


CLIPS, LABELS, SR = FSDD_CLIPS, FSDD_LABELS, 8000


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def clf(run):
    return load(run)


@pytest.fixture
def client(run):
    with TestClient(create_app(run, top_k=3)) as c:
        yield c


def clip_bytes(i: int) -> bytes:
    return Path(CLIPS[i]).read_bytes()


def wav_bytes(audio: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def long_audio(seconds: float = 3.0) -> np.ndarray:
    parts, n = [], 0
    for p in CLIPS:
        a = read_audio(p, SR)[0]
        parts += [a, np.zeros(SR // 4, np.float32)]
        n += len(a) + SR // 4
        if n >= seconds * SR:
            break
    return np.concatenate(parts)[:int(seconds * SR)]


def asgi_post(app, headers: dict, chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST through the raw ASGI interface with the body in ``chunks`` (what a client that lies about its
    Content-Length, or streams without one, sends). Returns (status, JSON answer, chunks the app read)."""
    read = 0
    out = {"status": None, "body": b""}

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # a client that never closes: the app must not wait for this

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}

    async def main():
        await asyncio.wait_for(app(scope, receive, send), 30)

    asyncio.run(main())
    return out["status"], json.loads(out["body"]), read


def assert_error(r, status: int, error: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    if error:
        assert body["error"] == error, body


# --- endpoints ------------------------------------------------------------------------------------------------


def test_health_labels_page_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "model": "cnn", "labels": 10, "precision": "float32"}
    labels = client.get("/v1/labels").json()
    assert labels["labels"] == LABELS and labels["sample_rate"] == SR and labels["clip_seconds"] == 0.75
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "/v1/classify" in page.text
    assert "src=\"http" not in page.text and "href=\"http" not in page.text  # no CDN: works offline
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "audio/*" in body
    params = {p["name"]: p for p in spec["paths"]["/v1/classify"]["post"]["parameters"]}
    assert set(params) == {"top_k", "threshold", "median_filter", "min_duration"}
    assert params["threshold"]["schema"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert params["top_k"]["in"] == "query" and "default 3" in params["top_k"]["description"]


def test_classify_multipart_and_raw_match_the_python_api(client, clf):
    for i in range(0, len(CLIPS), 2):
        expected = clf.predict(CLIPS[i], top_k=3)
        data = clip_bytes(i)
        multipart = client.post("/v1/classify", files={"file": ("clip.flac", data, "audio/flac")})
        raw = client.post("/v1/classify", content=data, headers={"Content-Type": "audio/flac"})
        octet = client.post("/v1/classify?top_k=1", content=data,
                            headers={"Content-Type": "application/octet-stream"})
        for r in (multipart, raw):
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"predictions", "events", "duration", "window"}  # the shape of every answer
            got = body["predictions"]
            assert len(got) == 3
            assert [p["label"] for p in got] == [p["label"] for p in expected]
            np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in expected], rtol=1e-6)
        assert [p["label"] for p in octet.json()["predictions"]] == [expected[0]["label"]]


def test_long_audio_gets_predictions_and_events(client, clf):
    audio = long_audio(3.0)
    r = client.post("/v1/classify?threshold=0.0", content=wav_bytes(audio), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "events", "duration", "window"}
    assert body["duration"] == pytest.approx(3.0, abs=1e-3) and body["window"] == 0.75
    decoded = sf.read(io.BytesIO(wav_bytes(audio)), dtype="float32")[0]  # the 16-bit PCM the server decodes
    expected = clf.predict(decoded, top_k=3, sampling_rate=SR)
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
    # threshold 0: every label is active in every window, so each label spans the whole recording
    assert {e["label"] for e in body["events"]} == set(LABELS)
    for e in body["events"]:
        assert e["start"] == pytest.approx(0.0) and e["end"] == pytest.approx(3.0, abs=1e-3)
        assert 0.0 <= e["peak"] <= 1.0


# --- limits and errors ----------------------------------------------------------------------------------------


def test_oversized_body_is_413_from_content_length(run):
    with TestClient(create_app(run, max_body_mb=1 / 1024)) as c:  # 1 KiB
        big = clip_bytes(0)
        assert len(big) > 1024
        assert_error(c.post("/v1/classify", content=big, headers={"Content-Type": "audio/flac"}), 413, "too_large")
        assert_error(c.post("/v1/classify", files={"file": ("a.flac", big, "audio/flac")}), 413, "too_large")
        assert c.get("/health").status_code == 200


@pytest.mark.parametrize("declared", [None, "100"])
def test_lying_or_unannounced_body_is_cut_off(run, declared):
    app = create_app(run, max_body_mb=1 / 1024)
    headers = {"content-type": "application/octet-stream"}
    if declared:
        headers["content-length"] = declared  # claims 100 bytes, sends 50 KiB
    chunks = [b"\0" * 512] * 100
    status, body, read = asgi_post(app, headers, chunks)
    assert status == 413 and body["error"] == "too_large"
    assert read <= 4, f"the app kept reading ({read} chunks) after the limit"
    assert os.listdir(app.state.upload_dir) == []


def test_audio_over_max_seconds_is_413(run):
    with TestClient(create_app(run, max_seconds=1.0)) as c:
        r = c.post("/v1/classify", content=wav_bytes(long_audio(2.0)))
        assert_error(r, 413, "too_long")
        assert c.post("/v1/classify", content=clip_bytes(0)).status_code == 200


@pytest.mark.parametrize("body", [b"this is not audio" * 50, b"RIFF\x10\x00\x00\x00WAVEfmt garbage", os.urandom(4096)])
def test_garbage_is_415(client, body):
    assert_error(client.post("/v1/classify", content=body, headers={"Content-Type": "audio/wav"}), 415,
                 "unsupported_media")
    assert_error(client.post("/v1/classify", files={"file": ("x.wav", body, "audio/wav")}), 415)


def webm_bytes(clip: str) -> bytes:
    buf = io.BytesIO()
    write_with_pyav(buf, "webm", "libopus", 48000, read_audio(clip, 48000)[0])
    return buf.getvalue()


def test_formats_only_ffmpeg_reads_decode_in_a_worker_process(client, clf, monkeypatch):
    """WebM/Opus (what the page's recorder sends) goes to a decoder process and is classified like the same audio
    decoded here; FLAC and WAV are decoded in the server's own process."""
    pool = client.app.state.decoders
    calls = []
    real = pool.decode
    monkeypatch.setattr(pool, "decode", lambda *a: calls.append(1) or real(*a))
    body = webm_bytes(CLIPS[2])
    r = client.post("/v1/classify", files={"file": ("rec.webm", body, "audio/webm")})
    assert r.status_code == 200 and calls == [1]
    answer = r.json()["predictions"]
    decoded = uploads.read_mono_limited(body, clf.sample_rate, 600)
    expected = clf.ranked(clf.scores(decoded, sampling_rate=clf.sample_rate)[0], len(answer))
    assert [p["label"] for p in answer] == [p["label"] for p in expected]
    assert np.allclose([p["score"] for p in answer], [p["score"] for p in expected], atol=1e-5)
    assert client.post("/v1/classify", content=clip_bytes(2)).status_code == 200
    assert calls == [1]  # FLAC did not need the decoder process


def test_a_decoder_crash_fails_that_request_and_the_server_goes_on(run, clf, monkeypatch):
    """A segmentation fault in the decoder process (here a worker that crashes at once) costs one 415."""
    from functools import partial

    crash = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(serving_app, "DecoderPool", partial(serving_app.DecoderPool, command=crash))
    with TestClient(create_app(run)) as c:
        r = c.post("/v1/classify", content=webm_bytes(CLIPS[3]), headers={"Content-Type": "audio/webm"})
        assert_error(r, 415, "unsupported_media")
        assert "SIGSEGV" in r.json()["detail"]
        r = c.post("/v1/classify", content=clip_bytes(3))
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == clf.predict(CLIPS[3])[0]["label"]


def test_a_failing_forward_pass_is_a_json_500_and_the_server_goes_on(run, clf, monkeypatch, caplog):
    app = create_app(run)
    batcher, real, calls = app.state.batcher, app.state.batcher._logits, []

    def logits(stacked):
        calls.append(len(stacked))
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return real(stacked)

    monkeypatch.setattr(batcher, "_logits", logits)
    with TestClient(app) as c:
        r = c.post("/v1/classify", content=clip_bytes(2))
        assert_error(r, 500, "internal_error")
        assert r.json()["detail"] == "RuntimeError: simulated kernel failure"
        assert any(rec.exc_info and "simulated kernel failure" in str(rec.exc_info[1]) for rec in caplog.records)
        r = c.post("/v1/classify", content=clip_bytes(2))
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == clf.predict(CLIPS[2])[0]["label"]
    assert calls == [1, 1]


def test_bad_multipart_and_empty_bodies_are_400(client):
    mp = "multipart/form-data; boundary=XyZ"
    cases = [
        (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", mp),  # never closed
        (b"not multipart at all", mp),
        (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n", "multipart/form-data"),  # no boundary
        (b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nabc\r\n--XyZ--\r\n", mp),  # no 'file'
        (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\r\n--XyZ--\r\n", mp),  # empty file
        (b"", "audio/wav"),  # empty body
    ]
    for body, ctype in cases:
        r = client.post("/v1/classify", content=body, headers={"Content-Type": ctype})
        assert_error(r, 400)
    for query, says in [("top_k=0", "top_k: must be at least 1"), ("top_k=2.5", "top_k: not an integer"),
                        ("threshold=1.5", "threshold: must be between 0 and 1"), ("threshold=nan", "threshold"),
                        ("threshold=x", "threshold: not a number"), ("median_filter=2", "median_filter: must be odd"),
                        ("median_filter=101", "between 1 and 99"), ("min_duration=-1", "min_duration")]:
        r = client.post(f"/v1/classify?{query}", content=clip_bytes(0))
        assert_error(r, 400, "bad_request")
        assert says in r.json()["detail"], (query, r.json())
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405)


def test_server_keeps_serving_after_a_burst_of_bad_requests(client, clf):
    bad = [dict(content=b"junk" * 100), dict(content=b""),
           dict(content=b"--b\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"}),
           dict(files={"nope": ("a", b"abc")}), dict(content=os.urandom(2000), headers={"Content-Length": "x"})]
    for _ in range(6):
        for kwargs in bad:
            assert 400 <= client.post("/v1/classify", **kwargs).status_code < 500
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/v1/classify", content=clip_bytes(1))
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == clf.predict(CLIPS[1])[0]["label"]


def test_queue_full_is_503_and_recovers(run, monkeypatch):
    app = create_app(run, queue_size=1, micro_batching=False)
    batcher = app.state.batcher
    slow = batcher._forward

    def forward(batch):
        import time
        time.sleep(0.3)
        return slow(batch)

    monkeypatch.setattr(batcher, "_forward", forward)
    statuses = [r.status_code for r in burst(app, [clip_bytes(i % 4) for i in range(8)])]
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1 and set(statuses) <= {200, 503}, statuses
    rejected = next(r for r in burst(app, [clip_bytes(0)] * 8) if r.status_code == 503)
    assert rejected.json()["error"] == "overloaded" and rejected.headers["retry-after"] == "1"
    assert [r.status_code for r in burst(app, [clip_bytes(0)])] == [200]  # recovers once the queue drains


# --- micro-batching -------------------------------------------------------------------------------------------


def burst(app, bodies: list[bytes], **headers) -> list:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/classify", content=b, headers=headers) for b in bodies])
    return asyncio.run(main())


def test_concurrent_requests_are_batched(run, clf):
    app = create_app(run, max_batch=16, max_wait_ms=200, top_k=3)
    order = [i % len(CLIPS) for i in range(24)]
    responses = burst(app, [clip_bytes(i) for i in order])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    sizes = app.state.batch_sizes
    assert sum(size * n for size, n in sizes.items()) == len(order)
    assert max(sizes) > 1, f"no request was batched: {dict(sizes)}"
    assert max(sizes) <= 16
    expected = clf.predict([CLIPS[i] for i in order], top_k=3)
    for r, exp in zip(responses, expected):
        got = r.json()["predictions"]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in exp], atol=1e-5)


def test_without_micro_batching_every_batch_is_one_request(run):
    app = create_app(run, micro_batching=False)
    responses = burst(app, [clip_bytes(i % 4) for i in range(10)])
    assert all(r.status_code == 200 for r in responses)
    assert dict(app.state.batch_sizes) == {1: 10}


def test_forward_passes_run_on_the_event_loop_in_calls_that_let_other_requests_in(run, monkeypatch):
    """Every model call runs on the event loop (no model thread to contend for the GIL), at most
    ``inference_batch_size`` windows at a time, and other requests are answered between the calls of a long pass."""
    order = []
    logits = serving_app.Batcher._logits

    def spy(self, stacked):
        asyncio.get_running_loop()  # raises RuntimeError off the loop's thread
        order.append(len(stacked))
        return logits(self, stacked)

    monkeypatch.setattr(serving_app.Batcher, "_logits", spy)
    monkeypatch.setattr("audioclf.inference.inference_batch_size", lambda *a, **kw: 4)
    clf = load(run)
    audio = np.resize(long_audio(2.0), 40 * (clf.clip_samples // 2))
    n_windows = len(window_starts(len(audio), clf.clip_samples))  # 39: 10 calls
    app = create_app(run)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            async def health_during_the_pass():
                while not order:  # the long pass has made its first model call
                    await asyncio.sleep(0)
                assert (await c.get("/health")).status_code == 200
                order.append("health")
            return (await asyncio.gather(c.post("/v1/classify", content=wav_bytes(audio)),
                                         health_during_the_pass()))[0]

    response = asyncio.run(main())
    assert response.status_code == 200
    calls = [n for n in order if n != "health"]
    assert sum(calls) == n_windows and max(calls) <= 4 and len(calls) == 10
    assert 0 < order.index("health") < len(order) - 1, order  # answered between two calls of the long pass


# --- temp files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spool", [False, True])
def test_uploads_only_touch_a_private_temp_dir_and_are_removed(run, tmp_path, monkeypatch, spool):
    """Small uploads are decoded in memory and never written; with the memory limit at 0 every upload is spooled
    to a randomly named file in the private folder and removed when its request is done."""
    global_tmp = tmp_path / "tmp"
    global_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(global_tmp))
    if spool:
        monkeypatch.setattr(uploads, "MEMORY_BODY_BYTES", 0)
    app = create_app(run)
    upload_dir = Path(app.state.upload_dir)
    assert upload_dir.parent == global_tmp and (upload_dir.stat().st_mode & 0o777) == 0o700
    seen = []
    decode = uploads.read_mono_limited

    def spy(source, *args, **kw):
        if spool:
            seen.append(Path(source))
            assert Path(source).exists()
        else:
            seen.append(source)
            assert isinstance(source, bytes) and os.listdir(upload_dir) == []
        return decode(source, *args, **kw)

    monkeypatch.setattr(uploads, "read_mono_limited", spy)  # every upload, junk too (then a decoder process)
    burst(app, [clip_bytes(i % 3) for i in range(6)] + [b"junk"] * 3)  # concurrent, in their own event loop
    assert os.listdir(upload_dir) == []
    with TestClient(app) as c:
        assert c.post("/v1/classify", files={"file": ("../../evil name.flac", clip_bytes(0), "audio/flac")}
                      ).status_code == 200
        assert c.post("/v1/classify", content=clip_bytes(1)).status_code == 200
        assert c.post("/v1/classify", content=b"garbage" * 99).status_code == 415
        assert c.post("/v1/classify", content=wav_bytes(long_audio(2.0))).status_code == 200
        assert len(seen) == 13
        for p in seen if spool else ():
            assert p.parent == upload_dir and "evil" not in p.name
            assert not p.exists()
        if not spool:
            assert seen[-4] == clip_bytes(0)  # the multipart file field, without the form around it
        assert os.listdir(upload_dir) == []
        assert os.listdir(global_tmp) == [upload_dir.name]  # nothing written next to it
    assert not upload_dir.exists()  # removed at shutdown


def test_only_short_small_uploads_decode_on_the_event_loop(run, monkeypatch):
    """A small upload whose header declares a short clip is decoded inline; a small file that declares a long
    recording (40 s of silence is a few KiB of FLAC) goes to a worker thread, so it cannot stall the server."""
    threads = []
    decode = uploads.read_mono_limited

    def spy(source, *args, **kw):
        try:
            asyncio.get_running_loop()
            threads.append(True)  # called on the event loop's thread
        except RuntimeError:
            threads.append(False)  # a worker thread has no running loop
        return decode(source, *args, **kw)

    monkeypatch.setattr(uploads, "read_mono_limited", spy)
    buf = io.BytesIO()
    sf.write(buf, np.zeros(SR * 40, np.float32), SR, format="FLAC")
    silence = buf.getvalue()
    assert len(silence) < uploads.INLINE_DECODE_BYTES
    with TestClient(create_app(run)) as c:
        assert c.post("/v1/classify", content=clip_bytes(0)).status_code == 200
        assert c.post("/v1/classify", content=silence).status_code == 200
    assert threads == [True, True, False]  # the 40 s file is refused inline at its header, decoded in a thread


def test_spool_moves_to_a_file_past_the_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MEMORY_BODY_BYTES", 1000)
    chunks = [bytes([i]) * 600 for i in range(3)]
    opened = []

    def open_file():
        opened.append(tmp_path / "spooled")
        return open(opened[-1], "wb")

    spool = uploads.Spool(open_file)
    spool.write(chunks[0])
    assert not opened and bytes(spool.buffer) == chunks[0]  # under the limit: memory only
    for chunk in chunks[1:]:
        spool.write(chunk)
    spool.close()
    assert len(opened) == 1 and opened[0].read_bytes() == b"".join(chunks) and not spool.buffer


# --- CLI ------------------------------------------------------------------------------------------------------


def test_serve_command_flags(run, monkeypatch):
    from audioclf import cli

    calls = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.update(app=app, **kw))
    rc = cli.main(["serve", str(run), "--port", "8123", "--max-batch", "4", "--max-wait-ms", "3",
                   "--no-micro-batching", "--max-body-mb", "2", "--max-seconds", "30"])
    assert rc == 0 and calls["port"] == 8123 and calls["host"] == "127.0.0.1"
    batcher = calls["app"].state.batcher
    assert (batcher.max_batch, batcher.max_wait_ms, batcher.micro_batching) == (4, 3.0, False)
    assert calls["app"].state.limits == {"max_body_bytes": 2 * 1024 * 1024, "max_seconds": 30.0}
    assert not batcher.classifier.amp
    cli.main(["serve", str(run), "--amp"])
    assert calls["app"].state.batcher.classifier.amp  # bf16 autocast in every forward pass (Classifier.logits)
    with TestClient(calls["app"]) as client:
        assert client.get("/health").json()["precision"] == "bf16"
        got = client.post("/v1/classify", content=clip_bytes(0)).json()["predictions"]
    want, exact = load(run, amp=True).predict(CLIPS[0], top_k=5), load(run).predict(CLIPS[0], top_k=5)
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], rtol=1e-5)
    assert [p["score"] for p in got] != [p["score"] for p in exact]


@pytest.mark.slow
def test_slow_clients_do_not_block_the_server(run, tmp_path):
    """Clients that announce a body and trickle it (or stall) hold only their own connection: others are served."""
    import socket
    from conftest import live_server
    clip = clip_bytes(0)
    with live_server(run, tmp_path / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        stalled = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/flac\r\n"
                      b"Content-Length: 100000\r\n\r\n" + clip[:100])
            stalled.append(s)
        try:
            import httpx
            for _ in range(3):
                r = httpx.post(url + "/v1/classify", content=clip, timeout=10)
                assert r.status_code == 200 and r.json()["predictions"][0]["label"]
            assert httpx.get(url + "/health", timeout=5).status_code == 200
        finally:
            for s in stalled:
                s.close()
        assert httpx.get(url + "/health", timeout=5).status_code == 200  # and after they hang up


_HBLKS = """
import ctypes, ctypes.util, sys
sys.path.insert(0, {root!r})
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = (ctypes.c_size_t,), (ctypes.c_void_p,)
def mmapped_while_held(size):  # how many mmapped blocks a malloc of `size` adds
    n = libc.mallinfo2().hblks; p = libc.malloc(size); n = libc.mallinfo2().hblks - n; libc.free(p); return n
from audioclf.malloc import keep_activations_in_heap
before = mmapped_while_held(8 << 20)
applied = keep_activations_in_heap()
print(before, applied, mmapped_while_held(8 << 20))
"""


def test_server_allocator_keeps_activation_sized_blocks_in_the_heap():
    import ctypes.util
    import platform
    import subprocess
    import sys
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        pytest.skip("glibc only")
    script = _HBLKS.format(root=str(Path(__file__).resolve().parents[1]))
    before, applied, after = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                            check=True).stdout.split()
    assert ctypes.util.find_library("c")
    assert int(before) == 1  # by default an 8 MiB block is its own mmap
    assert applied == "True" and int(after) == 0  # now it comes from the heap


# --- the load benchmark ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serving_bench_runs_and_every_request_succeeds(run):
    """``bench/serving.py`` end to end on a tiny run: the server floor, both modes and the ratio are printed, and
    every request was answered 200 (a floor server that answered 422 to everything once went unnoticed for two
    sessions; the bench now exits 1 on any failed request)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "serving.py"), str(run), "--rounds", "1",
                          "--requests", "16", "--concurrency", "1,4", "--max-seconds", "10", "--clips", "8"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(r"server floor .* [0-9]+ req/s .*, 0 errors", out.stdout), out.stdout
    assert re.search(r"micro-batching on / off = [0-9.]+x", out.stdout), out.stdout
    rows = re.findall(r"^\s+(on|off)\s+(1|4)\s+\d+\s+[0-9.]+\s+\S+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+(\d+)$", out.stdout,
                      re.M)
    assert len(rows) == 4 and all(errors == "0" for *_, errors in rows), out.stdout
