"""What every page handler shares: the templates (autoescaped), the services
of the request, and the filters that print protobuf values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from console.calls import Services
from console.security import CSRF_FIELD
from lifecycle.common.v1 import stage_pb2
from lifecycle.workflows.v1 import workflows_pb2

HERE = Path(__file__).parent


def _when(value: timestamp_pb2.Timestamp) -> str:
    """A Timestamp as UTC to the second; a dash when unset."""
    if not value.seconds and not value.nanos:
        return "—"
    return value.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def _enum_word(name: str) -> str:
    """EXECUTION_STATUS_RUNNING -> running; LIFECYCLE_STAGE_ACTIVATION -> activation."""
    for prefix in ("EXECUTION_STATUS_", "WORKFLOW_STATUS_", "LIFECYCLE_STAGE_"):
        if name.startswith(prefix):
            return name.removeprefix(prefix).lower().replace("_", " ")
    return name.lower()


def _workflow_status(value: workflows_pb2.WorkflowStatus.ValueType) -> str:
    return _enum_word(workflows_pb2.WorkflowStatus.Name(value))


def _execution_status(value: workflows_pb2.ExecutionStatus.ValueType) -> str:
    return _enum_word(workflows_pb2.ExecutionStatus.Name(value))


def _stage(value: stage_pb2.LifecycleStage.ValueType) -> str:
    return _enum_word(stage_pb2.LifecycleStage.Name(value))


def _pretty_json(value: struct_pb2.Struct) -> str:
    return json.dumps(MessageToDict(value), indent=2, sort_keys=True, ensure_ascii=False)


def _environment() -> jinja2.Environment:
    # Autoescape everything: user data (attributes, variables, BPMN names) is shown as text.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(
        when=_when,
        workflow_status=_workflow_status,
        execution_status=_execution_status,
        stage=_stage,
        pretty_json=_pretty_json,
    )
    environment.globals["csrf_field"] = CSRF_FIELD
    return environment


TEMPLATES = Jinja2Templates(env=_environment())


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, template, {"csrf": request.state.csrf, **context}, status_code=status_code
    )
