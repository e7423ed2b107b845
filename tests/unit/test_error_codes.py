"""One table of the sidecar's error codes: what the API answers, the client raises again."""

from __future__ import annotations

import pytest

from checkpoint.errors import ERROR_TYPES, ErrorCode, RunNotFoundError, TenantMismatchError
from checkpoint.stores.sidecar import _error_from
from sidecar.api import _ERROR_MAP, _flowpoint_error


@pytest.mark.parametrize(("cls", "status", "code"), _ERROR_MAP)
def test_every_store_error_the_api_answers_comes_back_as_itself(
    cls: type[Exception], status: int, code: ErrorCode
) -> None:
    answer = _flowpoint_error(cls("why"))  # type: ignore[arg-type]
    assert (answer.status, answer.error) == (status, code)
    again = _error_from(status, {"error": str(code), "message": "why"}, "test")
    if cls is TenantMismatchError:
        assert type(again) is RunNotFoundError  # another tenant's run does not exist for you
    else:
        assert isinstance(again, ERROR_TYPES[code]) and issubclass(cls, type(again))
    assert str(again) == "why"


def test_codes_are_plain_strings_on_the_wire() -> None:
    assert str(ErrorCode.STALE_EPOCH) == "stale_epoch" == ErrorCode.STALE_EPOCH
    assert ERROR_TYPES["stale_epoch"] is ERROR_TYPES[ErrorCode.STALE_EPOCH]


def test_request_level_codes_are_mapped_by_http_status() -> None:
    unmapped = {code for code in ErrorCode if code not in ERROR_TYPES}
    assert unmapped == {
        ErrorCode.INVALID_JSON,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ErrorCode.UNSUPPORTED_CONTENT_ENCODING,
        ErrorCode.BAD_CONTENT_ENCODING,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_READY,
        ErrorCode.INTERNAL,
    }
    assert type(_error_from(503, {"error": "not_ready"}, "test")).__name__ == (
        "StoreUnavailableError"
    )
    assert type(_error_from(401, {"error": "unauthorized"}, "test")).__name__ == "StoreError"


def test_the_outcome_header_has_one_name_on_both_sides() -> None:
    from checkpoint.stores.sidecar import OUTCOME_HEADER
    from instrumentation import emitter
    from sidecar import ingest

    assert emitter.OUTCOME_HEADER == OUTCOME_HEADER == ingest.OUTCOME_HEADER
