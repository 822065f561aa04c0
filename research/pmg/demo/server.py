"""The demo's HTTP server: one page and a few JSON endpoints over one :class:`research.pmg.api.PMG`.

    GET  /                  the page (static/index.html, with static/demo.js and static/demo.css)
    GET  /api/world         the config, whether a trained soft preference is used, every item (id, title, theme)
                            and the simulated users with their sample (history, target, conversation)
    GET  /items/<id>        an item's image as PNG (as the models read it: RGB)
    POST /api/personalize   {"history": [id, ...], "target": id, "conversation": [text, ...], "n": N}
                            -> the keywords and both methods' candidates, each image a PNG data URL

A request the API refuses (an unknown id, an empty history, the target inside the history, ...) and a body
that is not such a JSON object are answered with HTTP 400 and ``{"error": "error: <one line>"}``, the line the
command-line tools print. The demo takes item ids only: the API's free items name image files on the server,
which a web page has no business reading.

Requests run one at a time inside PMG (its lock); the server's threads keep serving the page and the stickers
meanwhile. The last answers are kept in memory: asking again is instant (PMG would draw the same images).
"""
from __future__ import annotations

import base64
import functools
import io
import json
import sys
import threading
import traceback
from collections import Counter, OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from research.pmg.api import RequestError, check_fields
from research.pmg.errors import PMGError, error_line, short_repr

if TYPE_CHECKING:
    import numpy as np

    from research.pmg.api import PMG, Personalized

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
         "/static/demo.css": ("demo.css", "text/css; charset=utf-8")}
# The page loads nothing but this server's files; images are this server's or data: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 1 << 20  # bytes of a request body: a history of ids is a few kB
MAX_ANSWERS = 32  # answers kept for repeated requests (a few MB at SD 1.5's 512 px)
MAX_USERS = 500  # simulated users listed in the picker (PMG-mini has 60; a real dataset has thousands)
METHODS = ("pmg", "no_personalization")


class DemoServer(ThreadingHTTPServer):
    """Serves the demo for ``pmg`` on ``address`` (``(host, 0)``: a free port; :attr:`url` says which)."""

    daemon_threads = True  # a browser's open connection does not keep the process alive

    def __init__(self, pmg: PMG, address: tuple[str, int], *, config: str, log: bool = True):
        self.pmg, self.log = pmg, log
        self._answers: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._answers_lock = threading.Lock()
        self.world = describe_world(pmg, config)  # prepares the dataset if missing: a bad one fails here
        try:
            super().__init__(address, Handler)
        except OSError as exc:  # the port is taken, the host unknown, ...
            raise PMGError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None

    def answer(self, body: Any) -> dict[str, Any]:
        """The answer to a request body; a repeated request is answered from memory (PMG gives the same request
        the same images, and a person clicks Generate twice)."""
        request = check_body(body)
        key = json.dumps(request, sort_keys=True)
        with self._answers_lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
        answer = personalize(self.pmg, request)
        with self._answers_lock:
            self._answers[key] = answer
            while len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
        return answer

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        path = urlsplit(self.path).path
        if path in PAGES:
            name, kind = PAGES[path]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), kind)
        elif path == "/api/world":
            self._send_json(HTTPStatus.OK, self.server.world)
        elif path.startswith("/items/"):
            self._guarded(lambda: self._send(HTTPStatus.OK, item_png(self.server.pmg, unquote(path[7:])),
                                             "image/png"), HTTPStatus.NOT_FOUND)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": error_line(f"no page {short_repr(path)}")})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/api/personalize":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": error_line(f"no endpoint {short_repr(self.path)}")})
            return
        self._guarded(lambda: self._send_json(HTTPStatus.OK, self.server.answer(self._body())),
                      HTTPStatus.BAD_REQUEST)

    def _guarded(self, answer, refused: HTTPStatus) -> None:
        """Run ``answer``; a refused request gets ``refused`` and its one-line message, a bug 500 and a traceback
        in the server's log."""
        try:
            answer()
        except RequestError as exc:
            self._send_json(refused, {"error": error_line(exc)})
        except PMGError as exc:  # the config's models or data, not the request
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": error_line(exc)})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                            {"error": error_line(f"internal error ({type(exc).__name__}); the server's log has "
                                                 "the traceback")})

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # where this request ends is unknown
            raise RequestError("request body: needs a Content-Length")
        if int(length) > MAX_BODY:
            self.close_connection = True  # the body is not read, so the connection cannot carry another request
            raise RequestError(f"request body: {int(length)} bytes, more than {MAX_BODY}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError("request body: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise RequestError(f"request body: not valid JSON: line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.log:
            super().log_message(format, *args)


def describe_world(pmg: PMG, config: str) -> dict[str, Any]:
    """What the page needs before any request: the items to click and the users to pick."""
    items = pmg.items
    if not items:
        raise PMGError(f"{config}: no prepared dataset at {pmg.layout.generate_data}; the demo picks items from it")
    users = []
    for user_id in pmg.users()[:MAX_USERS]:
        sample = pmg.user_sample(user_id)
        themes = Counter(_theme(items[i]) for i in sample.history).most_common(2)
        users.append({"id": user_id, "themes": [name for name, _ in themes], "history": list(sample.history),
                      "target": sample.target, "conversation": list(sample.conversation)})
    return {"config": config, "scenario": pmg.cfg.scenario, "soft_checkpoint": pmg.soft_checkpoint,
            "items": [{"id": item.id, "title": item.title, "theme": _theme(item)} for item in items.values()],
            "users": users}


def check_body(body: Any) -> dict[str, Any]:
    """A request body as ``{"history": [id, ...], "target": id, "conversation": [...], "n": N or None}``; the
    API checks the rest (that the ids exist, the conversation's texts, ``n``)."""
    check_fields(body, "request body")
    history, target = body["history"], body["target"]
    entries = [(f"history[{i}]", e) for i, e in enumerate(history)] if isinstance(history, list) else []
    for where, entry in [*entries, ("target", target)]:
        if not isinstance(entry, str):
            raise RequestError(f"{where}: must be an item id (text), got {short_repr(entry)}")
    conversation = body.get("conversation")
    return {"history": history, "target": target, "conversation": [] if conversation is None else conversation,
            "n": body.get("n")}


def personalize(pmg: PMG, request: dict[str, Any]) -> dict[str, Any]:
    """Answer a checked request (:func:`check_body`): both methods on the same history and target."""
    results = {method: pmg.personalize(request["history"], request["target"], request["conversation"],
                                       request["n"], method=method)
               for method in METHODS}
    first = results["pmg"]
    return {"sample": first.sample, "prepared": first.prepared, "soft": first.soft,
            "history": [{"id": item.id, "title": item.title} for item in first.history],
            "target": {"id": first.target.id, "title": first.target.title},
            "conversation": list(first.conversation),
            "preference_keywords": list(first.preference_keywords),
            "target_keywords": list(first.target_keywords),
            "methods": {method: _method(result) for method, result in results.items()}}


def _method(result: Personalized) -> dict[str, Any]:
    return {"chosen": result.chosen,
            "candidates": [{"k": c.k, "m": c.m, "w_p": c.weights[0], "w_t": c.weights[1], "d_p": c.d_p,
                            "d_t": c.d_t, "z": c.z, "chosen": c.chosen, "image": png_data_url(c.image)}
                           for c in result.candidates]}


@functools.lru_cache(maxsize=1024)
def _item_png(pmg: PMG, item_id: str) -> bytes:
    from research.pmg.images import load_rgb

    return _png(load_rgb(pmg.image_path(item_id)))


def item_png(pmg: PMG, item_id: str) -> bytes:
    """An item's image as PNG bytes; an unknown id is a :class:`RequestError`."""
    pmg.image_path(item_id)  # checked before the cache, which keeps only answers
    return _item_png(pmg, item_id)


def png_data_url(image: np.ndarray) -> str:
    """``(H, W, 3)`` uint8 -> ``data:image/png;base64,...``."""
    from PIL import Image

    return "data:image/png;base64," + base64.b64encode(_png(Image.fromarray(image))).decode("ascii")


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _theme(item) -> str:
    """The group an item is shown in: its category (a sticker's theme), else its first genre."""
    return item.category or (item.genres[0] if item.genres else "items")
