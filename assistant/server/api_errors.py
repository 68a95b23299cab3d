"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every failure a client sees."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """A request that cannot be answered as asked; becomes an HTTP status and an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str = INVALID_REQUEST,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    """400 for a body the API cannot use, naming the parameter at fault."""
    return ApiError(400, message, code, param)


def busy(message: str, retry_after_s: int, code: str) -> ApiError:
    """503 with Retry-After: the server is up but cannot take this request now."""
    return ApiError(503, message, code, kind=SERVER_ERROR, headers={"Retry-After": str(retry_after_s)})
