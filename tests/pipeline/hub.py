"""A model hub on 127.0.0.1 for download tests: real HTTP, behaving like the public hubs.

Two servers: the hub answers ``/<path>`` with a 302 to its CDN (another port, as huggingface.co sends to its
LFS host), an HTML page, or a 404; the CDN serves the bytes with ``Range``/206 and can break a transfer off
once midway, like a dropped connection."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in to continue</body></html>\n"


@dataclass
class Routes:
    files: dict[str, bytes] = field(default_factory=dict)      # hub path -> bytes (redirected to the CDN)
    html: set[str] = field(default_factory=set)                 # hub paths answering a web page (text/html)
    disguised: dict[str, bytes] = field(default_factory=dict)   # served directly as application/octet-stream
    cut_once: dict[str, int] = field(default_factory=dict)      # CDN path -> break off after N bytes, once
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (CDN path, Range header) seen


class Hub:
    def __init__(self) -> None:
        self.routes = Routes()
        self._cdn = self._serve(self._cdn_handler())
        self._hub = self._serve(self._hub_handler())
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (through the redirect); its hub URL."""
        self.routes.files[path.lstrip("/")] = data
        return f"{self.url}/{path.lstrip('/')}"

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    @staticmethod
    def _serve(handler) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _hub_handler(self):
        hub = self

        class Handler(_Quiet):
            def do_GET(self):
                path = self.path.lstrip("/")
                if path in hub.routes.html:
                    self._answer(200, HTML, "text/html; charset=utf-8")
                elif path in hub.routes.disguised:
                    self._answer(200, hub.routes.disguised[path], "application/octet-stream")
                elif path in hub.routes.files:
                    self.send_response(302)
                    self.send_header("Location", f"{hub.cdn_url}/lfs/{path}?signature=x")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._answer(404, b"Entry not found", "text/plain")

        return Handler

    def _cdn_handler(self):
        hub = self

        class Handler(_Quiet):
            def do_GET(self):
                path = self.path.split("?")[0].removeprefix("/lfs/")
                if path not in hub.routes.files:
                    self._answer(404, b"NoSuchKey", "application/xml")
                    return
                data = hub.routes.files[path]
                header = self.headers.get("Range")
                hub.routes.ranges.append((path, header or ""))
                start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
                body = data[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = hub.routes.cut_once.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def official_format_files(dev_bundle) -> dict[str, tuple[str, bytes]]:
    """The development bundle's models as the official files (role -> (official file name, bytes)): its
    generator, encoder, CLIP archive and SFE as they are (official formats already), its relevance file split
    into StyleCLIP's ``fs3.npy`` and ``S_mean_std`` (a pickle of per-layer mean and std lists)."""
    import io
    import json
    import pickle

    import numpy as np

    from pipeline.weights.bundle import read_manifest
    from pipeline.weights.sources import OFFICIAL

    manifest = read_manifest(dev_bundle)
    files = {role: (OFFICIAL[role].file, (dev_bundle / manifest.models[role].file).read_bytes())
             for role in ("generator", "encoder", "clip", "sfe")}
    with np.load(dev_bundle / manifest.models["relevance"].file) as rel:
        fs3, mean, std, meta = rel["fs3"], rel["style_mean"], rel["style_std"], json.loads(str(rel["meta"]))
    buffer = io.BytesIO()
    np.save(buffer, fs3)
    files["relevance"] = (OFFICIAL["relevance"].file, buffer.getvalue())
    cuts = np.cumsum(meta["style_dims"])[:-1]
    files["relevance_stats"] = (OFFICIAL["relevance_stats"].file,
                                pickle.dumps([np.split(mean, cuts), np.split(std, cuts)], protocol=2))
    return files
