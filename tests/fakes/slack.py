"""A fake Slack: response_url endpoints under /response/ and the Web API under /api/."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer, Reply

RESPONSE = "/response/"
POST_EPHEMERAL = "/api/chat.postEphemeral"


class FakeSlack(FakeServer):
    """Accepts every post unless scripted otherwise; records bodies for inspection."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/response/{hook}", self._response_url)
        app.router.add_post("/api/{method}", self._web_api)

    @property
    def response_prefix(self) -> str:
        return f"{self.url}{RESPONSE}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    async def _response_url(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = self.next_reply(RESPONSE) or Reply(json=None)
        self.record(request.path, request.headers, body, reply)
        if reply.json is None and reply.action == "reply":
            # Slack answers a response_url post with plain "ok".
            return web.Response(text="ok", status=reply.status, headers=reply.headers)
        return await self.respond(request, reply)

    async def _web_api(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            body: Any = await request.json()
        else:
            body = dict(await request.post())
        path = request.path
        reply = self.next_reply(path) or Reply(json={"ok": True, "message_ts": "1700000000.000100"})
        self.record(path, request.headers, body, reply)
        return await self.respond(request, reply)

    def delivered(self) -> list[Any]:
        """Every message body Slack accepted (so the user saw it), in arrival order."""
        with self._lock:
            return [
                r.body for r in self.requests if r.path.startswith((RESPONSE, POST_EPHEMERAL)) and r.accepted
            ]
