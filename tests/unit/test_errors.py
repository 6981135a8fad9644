"""The OpenAPI schema documents the API's own error shape, also for routes added after the
mechanism was written: nothing in a new router has to ask for it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel

from offload_api.errors import document_error_responses, extend_openapi

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
V1_ERRORS = {"400", "401", "413", "431", "503"}


class Thing(BaseModel):
    name: str


def _schema_with_a_new_v1_router() -> dict[str, Any]:
    """An app as main.create_app builds it, plus a router that knows nothing of error docs."""
    router = APIRouter(prefix="/things")

    @router.post("", status_code=202, responses={409: {"description": "Already there."}})
    def add_thing(thing: Thing) -> Thing:
        return thing

    @router.get("/{thing_id}", responses={404: {"description": "No such thing."}})
    def get_thing(thing_id: str) -> Thing:
        raise HTTPException(404, f"No thing {thing_id}.")

    @router.get("")
    def list_things() -> list[Thing]:
        return []

    app = FastAPI()
    extend_openapi(app, document_error_responses)

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "alive"}

    app.include_router(router, prefix="/v1")
    return app.openapi()


def test_every_v1_operation_documents_the_errors_any_v1_route_can_give() -> None:
    paths = _schema_with_a_new_v1_router()["paths"]
    for path, method in [("/v1/things", "post"), ("/v1/things", "get"), ("/v1/things/{thing_id}", "get")]:
        responses = paths[path][method]["responses"]
        assert set(responses) >= V1_ERRORS, (path, method, sorted(responses))
    assert paths["/v1/things"]["get"]["responses"]["401"]["headers"]["WWW-Authenticate"]
    assert paths["/v1/things"]["get"]["responses"]["503"]["headers"]["Retry-After"]
    # Outside /v1 nothing asks for an API key.
    assert "401" not in paths["/livez"]["get"]["responses"]


def test_every_error_response_has_the_error_model_and_fastapis_422_is_gone() -> None:
    schema = _schema_with_a_new_v1_router()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (path, method, status)
    things = schema["paths"]["/v1/things"]
    assert things["post"]["responses"]["409"]["description"] == "Already there."  # the route's words kept
    assert "422" in things["post"]["responses"]  # a body: it can be invalid
    assert "422" in schema["paths"]["/v1/things/{thing_id}"]["get"]["responses"]  # a path parameter
    assert "422" not in things["get"]["responses"]  # nothing to validate
    assert "HTTPValidationError" not in str(schema)
    assert "ValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail", "code"]
    assert set(schema["components"]["schemas"]["FieldError"]["required"]) == {"field", "message"}
