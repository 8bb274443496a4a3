"""A recording TCP proxy on loopback: everything said to the broker and by it passes here.

The broker's issuer is the proxy's address, so the browser, the holders and the app all talk
to the broker through it; the test then searches the recording for health data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from urllib.parse import unquote_plus


class RecordingProxy:
    def __init__(self, listen_port: int, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        # One byte stream per connection and direction ("request" | "answer"), in order.
        self.streams: dict[tuple[int, str], bytearray] = {}
        self._connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="recording-proxy")
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> RecordingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def close(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, self.listen_port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
            number = self._connections
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()  # the broker is down: the client sees a closed connection
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str) -> None:
            try:
                while data := await src.read(65536):
                    with self._lock:
                        self.streams.setdefault((number, direction), bytearray()).extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except RuntimeError:
                    pass

        await asyncio.gather(pump(reader, up_writer, "request"), pump(up_reader, writer, "answer"))

    # -- searching ---------------------------------------------------------------------------

    def raw(self) -> str:
        with self._lock:
            streams = [bytes(data) for data in self.streams.values()]
        return "\n".join(data.decode("utf-8", errors="replace") for data in streams)

    def text(self) -> str:
        """The recording as text, with every decoding under which data could hide: raw,
        without chunked-encoding size lines, URL-decoded (forms, queries), and the payload of
        every JWS/JWT in it."""
        raw = self.raw()
        dechunked = re.sub(r"\r\n[0-9a-fA-F]{1,8}\r\n", "", raw)
        decoded = [raw, dechunked, unquote_plus(raw)]
        for match in re.finditer(r"eyJ[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*", raw):
            payload = match.group(1)
            try:
                text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8")
                decoded.append(json.dumps(json.loads(text), ensure_ascii=False))
            except ValueError:
                continue
        return "\n".join(decoded)

    def jws_count(self) -> int:
        return len(re.findall(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", self.raw()))
