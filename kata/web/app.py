"""The dashboard's HTTP side: a Starlette application over one open store.

Pages (Jinja2 templates, server-rendered SVG, one small script for the live view) and
their JSON twins under ``/api/``:

==========================  ==========================================================
``/``, ``/api/runs``        runs, newest first; ``?pipeline= &ref= &event= &status=``,
                            ``&offset= &limit=`` (runs in progress on this host first)
``/runs/{id}``              a run: DAG, timeline, per-step logs, test totals, why a
``/api/runs/{id}``          step missed; a run in progress: its live view
``/api/runs/{id}/log/{step}``  a step's log (``?service=``): ``text`` and ``html``
``/api/runs/{id}/events``   server-sent events: the live journal's events as they come
``/cache``, ``/api/cache``  hit rate per day and pipeline, store size, biggest entries,
                            steps that miss most
``/login``                  the token form (only with ``token``)
==========================  ==========================================================

With a ``token`` every request needs ``Authorization: Bearer <token>`` or the
``kata_token`` cookie ``/login`` sets (HttpOnly, SameSite=Strict); without one the server
must listen on a loopback address (``kata web`` enforces it). Nothing here writes the
store. Secrets are masked before anything reaches the store; the pages show only stored
text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path
from urllib.parse import parse_qs
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (HTMLResponse, JSONResponse, RedirectResponse, Response,
                                 StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from kata.realise.events import JSON_VERSION, iso_time
from kata.realise.history import local_time
from kata.web import data, draw

HERE = Path(__file__).parent
COOKIE = "kata_token"
POLL = 0.2  # seconds between looks at a live journal


def create_app(store: Any, *, token: str | None = None, warm: bool = True,
               state_dir: str | None = None) -> Starlette:
    """The dashboard over ``store`` (an open ``store.Store``); ``token``: what every
    request must present (None: nothing, for a loopback address only); ``state_dir``:
    where the live journals of runs in progress are (default: the store's state dir; a
    store opened read-only has a private one, so its caller names the store's own); ``warm``: read
    the run summaries once in the background from the start (from the store's index;
    records the index lacks, e.g. written by another host, are decoded there)."""
    live_dir = state_dir if state_dir is not None else store.state_dir
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(local_time=local_time, short_ref=data.short_ref, human=draw.human,
                       seconds=draw._fmt_seconds, anchor=draw._anchor)
    index = data.RunIndex(store)
    if warm:
        import threading

        threading.Thread(target=index.entries, name="kata-web-warm", daemon=True).start()

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"auth": token is not None, **ctx},
                                          status_code=status)

    def api(doc: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse({"version": JSON_VERSION, **doc}, status_code=status)

    def not_found(request: Request, what: str, api_call: bool) -> Response:
        if api_call:
            return api({"error": "not_found", "message": what}, 404)
        return page(request, "error.html", 404, message=what)

    # -- runs -------------------------------------------------------------------

    def _runs(request: Request) -> tuple[data.RunsPage, data.RunFilter, list[dict[str, Any]]]:
        q = request.query_params
        flt = data.RunFilter(pipeline=q.get("pipeline", ""), ref=q.get("ref", ""),
                             event=q.get("event", ""), status=q.get("status", ""))
        found = data.runs_page(index, flt, offset=_int(q.get("offset"), 0),
                               limit=min(_int(q.get("limit"), 50), 500))
        live = [r for r in data.live_runs(live_dir)
                if (not flt.pipeline or r["pipeline"] == flt.pipeline)
                and flt.status in ("", "running")]
        return found, flt, live

    def runs_html(request: Request) -> Response:
        found, flt, live = _runs(request)
        return page(request, "runs.html", found=found, flt=flt, live=live,
                    statuses=data.STATUSES)

    def runs_json(request: Request) -> Response:
        found, flt, live = _runs(request)
        return api({"total": found.total, "offset": found.offset, "limit": found.limit,
                    "live": live, "runs": [r.to_json() for r in found.runs],
                    "filters": {"pipelines": list(found.pipelines), "refs": list(found.refs),
                                "events": list(found.events)}})

    # -- one run ----------------------------------------------------------------

    def run_html(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        view = data.run_view(store, run_id)
        if view is None:
            if os.path.exists(data.journal_path(live_dir, run_id)):
                return page(request, "live.html", run_id=run_id)
            return not_found(request, f"no run {run_id!r} in the store", False)
        logs = {s.name: data.step_log(store, view, s.name) for s in view.steps
                if s.record.status != "skipped"}
        return page(request, "run.html", view=view, logs=logs, why=data.miss_reasons(store, view),
                    dag=draw.dag_svg(view), timeline=draw.timeline_svg(view))

    def run_json(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        view = data.run_view(store, run_id)
        if view is None:
            if os.path.exists(data.journal_path(live_dir, run_id)):
                return api({"run": {"id": run_id, "status": "running"},
                            "events": f"/api/runs/{run_id}/events"})
            return not_found(request, f"no run {run_id!r} in the store", True)
        doc = view.to_json()
        why = data.miss_reasons(store, view)
        for s in doc["steps"]:
            s["why"] = why.get(s["name"])
        return api(doc)

    def log_json(request: Request) -> Response:
        run_id, step = request.path_params["run_id"], request.path_params["step"]
        view = data.run_view(store, run_id)
        found = data.step_log(store, view, step, request.query_params.get("service", "")) \
            if view is not None else None
        if found is None:
            return not_found(request, f"no log of step {step!r} in run {run_id!r}", True)
        return api({"run": run_id, "step": step, "text": found.text, "html": found.html(),
                    "truncated": found.truncated, "produced_by": found.produced_by})

    async def events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        path = data.journal_path(live_dir, run_id)
        if not os.path.exists(path):
            if store.get_run(run_id) is not None:  # over already: say so, the page reloads
                return StreamingResponse(_once({"event": "end", "run_id": run_id}),
                                         media_type="text/event-stream")
            return not_found(request, f"no run {run_id!r} in progress", True)
        return StreamingResponse(_follow(request, path, run_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def _follow(request: Request, path: str, run_id: str):  # noqa: ANN202
        from kata.report.journal import live

        try:
            f = open(path, encoding="utf-8")
        except FileNotFoundError:
            yield _sse({"event": "end", "run_id": run_id})
            return
        with f:
            pending = ""
            while True:
                chunk = f.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        if event.get("event") == "output":
                            event["html"] = data.ansi_html(event.get("text", ""))
                        elif event.get("event") == "parse":  # the DAG, to recolour live
                            event["dag"] = draw.dag_svg(data.planned_view(run_id, event))
                        yield _sse(event)
                        if event.get("event") == "done":
                            return
                    continue
                if await request.is_disconnected():
                    return
                if not os.path.exists(path) or not live(Path(path)):
                    yield _sse({"event": "end", "run_id": run_id})
                    return
                await asyncio.sleep(POLL)

    # -- cache ------------------------------------------------------------------

    def cache_html(request: Request) -> Response:
        trends = data.cache_trends(store, index)
        return page(request, "cache.html", t=trends,
                    rate_chart=draw.rate_chart_svg(trends.days, trends.hits, trends.misses),
                    size_chart=draw.size_chart_svg(trends.days, trends.size_days),
                    pipeline_charts=[(p, draw.rate_chart_svg(trends.days, h, m,
                                                              css_class="hit-rate pipeline", height=120),
                                      trends.rate(sum(h), sum(m)))
                                     for p, h, m in trends.per_pipeline])

    def cache_json(request: Request) -> Response:
        return api(data.cache_trends(store, index).to_json())

    # -- login ------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if token is None:
            return RedirectResponse("/", 303)
        if request.method == "POST":
            # a urlencoded form of one field: parsed here (Starlette's form() needs
            # python-multipart, a dependency for one field)
            body = (await request.body())[:4096].decode("utf-8", "replace")
            given = (parse_qs(body).get("token") or [""])[0]
            if hmac.compare_digest(given.encode(), token.encode()):
                resp = RedirectResponse("/", 303)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
                return resp
            return page(request, "login.html", 401, failed=True)
        return page(request, "login.html", failed=False)

    routes = [
        Route("/", runs_html), Route("/runs", runs_html),
        Route("/runs/{run_id}", run_html), Route("/cache", cache_html),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api/runs", runs_json), Route("/api/runs/{run_id}", run_json),
        Route("/api/runs/{run_id}/log/{step:path}", log_json),
        Route("/api/runs/{run_id}/events", events),
        Route("/api/cache", cache_json),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    if token is not None:
        app.add_middleware(_TokenGate, token=token)
    return app


class _TokenGate:
    """ASGI middleware: a request without the token gets 401 (the API) or the login
    page (a browser); ``/login`` and ``/static`` are open."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/login" \
                or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else \
            request.cookies.get(COOKIE, "")
        if hmac.compare_digest(given.encode(), self.token):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/api/"):
            resp: Response = JSONResponse({"version": JSON_VERSION, "error": "unauthorized",
                                           "message": "a bearer token is required"}, 401,
                                          headers={"WWW-Authenticate": "Bearer"})
        else:
            resp = RedirectResponse("/login", 303)
        await resp(scope, receive, send)


def _sse(event: dict[str, Any]) -> str:
    return "data: " + json.dumps(event, ensure_ascii=False) + "\n\n"


async def _once(event: dict[str, Any]):  # noqa: ANN202
    yield _sse(event)


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text)) if text is not None else default
    except ValueError:
        return default


__all__ = ["create_app", "iso_time"]
