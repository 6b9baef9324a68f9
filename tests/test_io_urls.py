"""Images given as http(s) URLs (issue 10, item 15), against a loopback server in a thread: the
image is fetched and decoded, its source stays the URL, file names come from the URL's path,
and every failure (HTTP error, not an image, too large, too slow, unreachable) is one line."""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

import mmcam.io
from mmcam.cli import main, unique_stems
from mmcam.data.scenes import make_split
from mmcam.errors import InputError
from mmcam.io import load_image
from reliability_support import one_torch_thread  # noqa: F401


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


SCENE = make_split("test", 1)[0]
SMALL = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
ROUTES: dict[str, tuple[int, str, bytes]] = {  # path -> status, content type, body
    "/scene.png": (200, "image/png", _png(SCENE.image)),
    "/photos/small%20one.png": (200, "image/png", _png(SMALL)),
    "/page.html": (200, "text/html; charset=utf-8", b"<html><body>not an image</body></html>"),
    "/empty.png": (200, "image/png", b""),
    "/broken.png": (200, "image/png", _png(SCENE.image)[: len(_png(SCENE.image)) // 2]),
}
SLOW_SECONDS = 2.0


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        if path.startswith("/slow"):
            time.sleep(SLOW_SECONDS)  # longer than the test's timeout
        if path.startswith("/trickle"):  # answers at once, then sends the body slowly
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.1)
            return
        route = path.removeprefix("/slow").removeprefix("/unsized")
        status, content_type, body = ROUTES.get(route, (404, "text/plain", b"no such file"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if not path.startswith("/unsized"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (keep test output quiet)
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout, size limit) closes the connection mid-answer


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``http://127.0.0.1:PORT``, served from a thread for this module's tests."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _error(url: str) -> str:
    with pytest.raises(InputError) as raised:
        load_image(url)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(url), message
    return message


def test_an_image_url_is_fetched_and_decoded(server) -> None:
    loaded = load_image(f"{server}/scene.png")
    np.testing.assert_array_equal(loaded.pixels, SCENE.image)
    assert loaded.source == f"{server}/scene.png" and loaded.notes == ()
    small = load_image(f"{server}/photos/small%20one.png?size=4")
    np.testing.assert_array_equal(small.pixels, SMALL)


def test_file_name_stems_come_from_the_url_path() -> None:
    sources = ["http://127.0.0.1:8000/photos/small%20one.png?size=4", "https://example.org/a/cat.jpg#x", "https://example.org/", "https://example.org/b/cat.jpeg"]
    assert unique_stems(sources) == ["small one", "cat", "image", "cat-2"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.png", "could not be fetched: HTTP 404 Not Found"),
        ("/page.html", "is not a readable image (supported: PNG, JPEG, GIF, BMP, TIFF, WebP); the server sent text/html"),
        ("/empty.png", "is empty, not an image"),
        ("/broken.png", "could not be decoded (truncated or corrupt?)"),
    ],
    ids=["404", "html", "empty", "truncated"],
)
def test_url_failures_are_one_line(server, path, message) -> None:
    assert message in _error(f"{server}{path}")


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "no-content-length"])
def test_a_response_over_the_size_limit_is_refused(server, monkeypatch, sized) -> None:
    body = len(ROUTES["/scene.png"][2])
    monkeypatch.setattr(mmcam.io, "URL_MAX_BYTES", body - 1)
    prefix = "" if sized else "/unsized"
    assert "is larger than " in _error(f"{server}{prefix}/scene.png")
    monkeypatch.setattr(mmcam.io, "URL_MAX_BYTES", body)  # exactly the limit is fine
    np.testing.assert_array_equal(load_image(f"{server}{prefix}/scene.png").pixels, SCENE.image)


def test_a_slow_server_hits_the_timeout(server, monkeypatch) -> None:
    monkeypatch.setattr(mmcam.io, "URL_TIMEOUT_S", 0.3)
    for path in ("/slow/scene.png", "/trickle.png"):  # no answer; an answer that never ends
        started = time.monotonic()
        assert _error(f"{server}{path}") == f"{server}{path} did not arrive within 0.3 s"
        assert time.monotonic() - started < 1.5, path


def test_unreachable_hosts_and_other_schemes_are_one_line() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "could not be fetched: [Errno 111] Connection refused" in _error(f"http://127.0.0.1:{port}/x.png")
    assert _error("ftp://127.0.0.1/x.png") == (
        "ftp://127.0.0.1/x.png: unsupported URL scheme 'ftp'; give an http(s) URL or a file path"
    )


def test_cli_caption_of_a_url(server, capsys, tmp_path) -> None:
    url = f"{server}/scene.png"
    assert main(["caption", url, "--json", "--method", "gradcam", "--out", str(tmp_path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image"] == url and record["caption"] == SCENE.caption
    assert record["words"][0]["heatmap"] == str(tmp_path / "scene_00_a.npy")
    assert np.load(record["words"][0]["heatmap"]).shape == SCENE.image.shape[:2]
    assert main(["caption", f"{server}/nothing.png", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"mmcam: error: {server}/nothing.png could not be fetched: HTTP 404 Not Found\n"


def test_cli_batch_of_urls_keeps_going_after_a_bad_one(server, capsys, tmp_path) -> None:
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(json.dumps({"image": f"{server}{path}", "caption": "a red circle"}) + "\n" for path in ("/page.html", "/scene.png")))
    assert main(["caption", "--batch", str(batch), "--json", "--method", "gradcam"]) == 1
    bad, good = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert bad == {"image": f"{server}/page.html", "error": f"{server}/page.html is not a readable image (supported: PNG, JPEG, GIF, BMP, TIFF, WebP); the server sent text/html"}
    assert good["image"] == f"{server}/scene.png" and good["caption"] == "a red circle"
