"""A page a real browser loads (tests/integration/test_browser.py): its script fetches in
parallel, reads a streamed response chunk by chunk, posts a body, and writes what it saw into
the page."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

from flask_cluster import FlaskCluster

cluster = FlaskCluster()
PARALLEL = 24  # fetches at once: Chromium opens up to 6 connections to one host
CHUNKS = 5

PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>flask_cluster in a browser</title></head>
<body><pre id="out">pending</pre>
<script>
(async () => {{
  const out = {{}};
  try {{
    const replies = await Promise.all(Array.from({{length: {PARALLEL}}}, () =>
      fetch("/worker", {{cache: "no-store"}}).then(r => r.json())));
    out.pids = [...new Set(replies.map(r => r.pid))].sort();
    const stream = await fetch("/stream");
    const reader = stream.body.getReader();
    const decoder = new TextDecoder();
    out.chunks = [];
    for (;;) {{
      const {{done, value}} = await reader.read();
      if (done) break;
      out.chunks.push(decoder.decode(value));
    }}
    out.encoding = stream.headers.get("transfer-encoding");
    const echo = await fetch("/echo", {{method: "POST", headers: {{"Content-Type":
      "application/json"}}, body: JSON.stringify({{text: "héllo ✓", n: 42}})}});
    out.echo = await echo.json();
    out.missing = (await fetch("/no-such-page")).status;
  }} catch (error) {{
    out.error = String(error);
  }}
  document.getElementById("out").textContent = JSON.stringify(out);
}})();
</script></body></html>"""


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.get("/")
    def page() -> str:
        return PAGE

    @app.get("/worker")
    def worker() -> Response:
        return jsonify(pid=os.getpid())

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for number in range(CHUNKS):
                yield f"chunk {number};"
                time.sleep(0.05)
        return Response(chunks(), mimetype="text/plain")

    @app.post("/echo")
    def echo() -> Response:
        return jsonify(request.get_json())

    return app


app = create_app()
