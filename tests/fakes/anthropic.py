"""A fake Anthropic Messages API: records requests, answers from a script or with an echo."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer, Reply

MESSAGES = "/v1/messages"


def message(text: str, *, stop_reason: str = "end_turn", model: str = "claude-haiku-5-5") -> dict[str, Any]:
    """A successful Messages API response body."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 34},
    }


def error(
    status: int, kind: str, *, error_code: str | None = None, retry_after: float | None = None
) -> Reply:
    """An Anthropic error response."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
    if error_code:
        body["error"]["details"] = {"error_code": error_code}
    headers = {"request-id": "req_fake_error"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return Reply(status=status, json=body, headers=headers)


def api_key(headers: Any) -> str | None:
    """The key as the SDK sends it: ``x-api-key`` or ``Authorization: Bearer``."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (
        bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
    )


class FakeAnthropic(FakeServer):
    """Answers "Answer to: <question>" unless scripted otherwise."""

    #: Seconds every unscripted answer takes.
    default_delay = 0.0

    def reset(self) -> None:
        super().reset()
        self.default_delay = 0.0

    def routes(self, app: web.Application) -> None:
        app.router.add_post(MESSAGES, self._messages)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not api_key(request.headers):
            return web.json_response(error(401, "authentication_error").json, status=401)
        model = {
            "type": "model",
            "id": "claude-haiku-5-5",
            "display_name": "Claude Haiku 5.5",
            "created_at": "2026-01-01T00:00:00Z",
        }
        return web.json_response(
            {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]}
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = self.next_reply(MESSAGES)
        if not api_key(request.headers):
            reply = error(401, "authentication_error")
        elif reply is None:
            question = body["messages"][-1]["content"]
            reply = Reply(
                json=message(f"Answer to: {question}"),
                headers={"request-id": "req_fake"},
                delay=self.default_delay,
            )
        self.record(MESSAGES, request.headers, body, reply)
        return await self.respond(request, reply)

    @property
    def calls(self) -> list[Any]:
        return [r.body for r in self.received(MESSAGES)]
