"""Compensation (docs/workflows.md, "Compensation"): compensation boundary
events and their handlers, compensation intermediate throw and end events,
on documents as Camunda Modeler 5 saves them; handlers are jobs a worker
activates and completes, so the order in which they run is the order their
jobs are activated."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from lifecycle.workflows.v1 import workflows_pb2 as pb
from lifecycle.workflows.v1 import workflows_pb2_grpc
from runtime.structs import dict_to_struct
from tests.support import (
    ScratchDatabase,
    free_port,
    rpc_error,
    service_env,
)
from tests.workflows.bpmn_docs import (
    boundary,
    chain,
    definitions,
    end,
    flow,
    service,
    start,
    subprocess,
    xor,
)
from tests.workflows.bpmn_multi import marker, script
from tests.workflows.conftest import (
    Stub,
    deploy,
    execution,
    incident_of,
    jobs,
    path,
    publish,
    refused,
    until_status,
    until_waiting_at,
)
from tests.workflows.conftest import start as start_execution
from tests.workflows.service_processes import service_process

COMPLETED = pb.EXECUTION_STATUS_COMPLETED
RUNNING = pb.EXECUTION_STATUS_RUNNING


# ---------------------------------------------------------------- documents


def handler(id: str, job_type: str) -> str:
    """A compensation handler: a service task with the compensation marker."""
    return service(id, job_type).replace(
        f'<bpmn:serviceTask id="{id}"', f'<bpmn:serviceTask id="{id}" isForCompensation="true"'
    )


def compensated_by(activity: str, undo: str) -> str:
    """A compensation boundary event on `activity` and its association with `undo`."""
    return (
        f'<bpmn:boundaryEvent id="{activity}_compensation" attachedToRef="{activity}">'
        f'<bpmn:compensateEventDefinition id="{activity}_definition"/></bpmn:boundaryEvent>'
        f'<bpmn:association id="{activity}_association" associationDirection="One"'
        f' sourceRef="{activity}_compensation" targetRef="{undo}"/>'
    )


def compensable(activity: str, kind: str) -> list[str]:
    """`activity` (a job `book-<kind>`) and its handler `undo_<activity>` (`undo-<kind>`)."""
    return [
        service(activity, f"book-{kind}"),
        handler(f"undo_{activity}", f"undo-{kind}"),
        compensated_by(activity, f"undo_{activity}"),
    ]


def throw(id: str, activity: str | None = None, *, tag: str = "intermediateThrowEvent") -> str:
    reference = f' activityRef="{activity}"' if activity else ""
    return (
        f'<bpmn:{tag} id="{id}"><bpmn:compensateEventDefinition id="{id}_definition"'
        f"{reference}/></bpmn:{tag}>"
    )


def new_kind() -> str:
    """A job type suffix of a test's own: its jobs are nobody else's."""
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------- driving


async def complete_next(wf: Stub, job_type: str, **variables: object) -> str:
    """Activates the one job of `job_type` ready now (the step that made it is
    committed when the call that caused it returns) and completes it; its element."""
    (job,) = await jobs(wf, job_type, count=10, wait=0)
    await wf.CompleteJob(
        pb.CompleteJobRequest(job_key=job.job_key, variables=dict_to_struct(variables))
    )
    return job.element_id


async def stored_records(admin: asyncpg.Connection, execution_id: str) -> list[str]:
    rows = await admin.fetch(
        "SELECT element_id FROM workflows.compensations WHERE execution_id = $1 ORDER BY seq",
        uuid.UUID(execution_id),
    )
    return [row["element_id"] for row in rows]


def activated(executed: pb.Execution, element: str) -> int:
    return path(executed, "activated").count(element)


# ---------------------------------------------------------------- the saga


async def test_a_failed_payment_undoes_the_flight_then_the_hotel(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        *compensable("book_flight", kind),
        service("charge", f"charge-{kind}"),
        boundary("declined", "charge", error="declined"),
        throw("undo"),
        end("booked"),
        end("cancelled"),
        *chain("start", "book_hotel", "book_flight", "charge", "booked"),
        flow("to_undo", "declined", "undo"),
        flow("to_cancelled", "undo", "cancelled"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    assert await complete_next(wf, f"book-{kind}") == "book_hotel"
    assert await complete_next(wf, f"book-{kind}") == "book_flight"
    assert await stored_records(admin, running.id) == ["book_hotel", "book_flight"]
    (charge,) = await jobs(wf, f"charge-{kind}", count=10, wait=0)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=charge.job_key, error_code="declined"))
    # One handler at a time, the latest completion first; the throw event waits.
    await until_waiting_at(wf, running.id, "undo", "undo_book_flight")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_flight"
    await until_waiting_at(wf, running.id, "undo", "undo_book_hotel")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-4:] == ["undo_book_flight", "undo_book_hotel", "undo", "cancelled"]
    # An ended execution keeps no records.
    assert await stored_records(admin, running.id) == []


async def test_an_activity_ref_compensates_that_activity_only(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        *compensable("book_flight", kind),
        throw("undo", "book_hotel"),
        end(),
        *chain("start", "book_hotel", "book_flight", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"book-{kind}")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_flight") == 0
    assert await jobs(wf, f"undo-{kind}", wait=0) == []


async def test_a_compensation_end_event_completes_its_scope_after_its_handlers(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        *compensable("book_flight", kind),
        throw("undo_end", tag="endEvent"),
        *chain("start", "book_hotel", "book_flight", "undo_end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"book-{kind}")
    waiting = await until_waiting_at(wf, running.id, "undo_end", "undo_book_flight")
    assert waiting.status == RUNNING
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_flight"
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-1] == "undo_end"


async def test_a_throw_with_nothing_to_compensate_passes_straight_through(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        throw("undo"),
        *compensable("book_hotel", kind),
        end(),
        *chain("start", "undo", "book_hotel", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    assert running.current_node_ids == ["book_hotel"]
    assert path(running) == ["start", "undo"]
    await complete_next(wf, f"book-{kind}")
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_hotel") == 0


async def test_an_incident_on_a_handler_is_resolved_and_the_compensation_goes_on(
    wf: Stub,
) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        throw("undo"),
        end(),
        *chain("start", "book_hotel", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    (job,) = await jobs(wf, f"undo-{kind}", count=10, wait=0)
    await wf.FailJob(pb.FailJobRequest(job_key=job.job_key, retries=0, error_message="hotel down"))
    incident = await incident_of(wf, running.id)
    assert incident.element_id == "undo_book_hotel"
    assert (await execution(wf, running.id)).status == RUNNING
    await wf.ResolveIncident(pb.ResolveIncidentRequest(incident_id=incident.id))
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    await until_status(wf, running.id, COMPLETED)


async def test_an_activity_that_completed_twice_is_compensated_twice(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_night", kind),
        xor("more", default="enough"),
        throw("undo"),
        end(),
        *chain("start", "book_night", "more"),
        flow("again", "more", "book_night", "nights < 2"),
        flow("enough", "more", "undo"),
        flow("f_end", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn), nights=0)
    await complete_next(wf, f"book-{kind}", nights=1)
    await complete_next(wf, f"book-{kind}", nights=2)
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_night"
    assert (await execution(wf, running.id)).status == RUNNING
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_night"
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_night") == 2


async def test_a_handler_runs_once_however_many_throws_follow(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        throw("undo"),
        throw("undo_again"),
        end(),
        *chain("start", "book_hotel", "undo", "undo_again", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"undo-{kind}")
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_hotel") == 1
    assert path(done)[-3:] == ["undo", "undo_again", "end"]


async def test_handlers_may_be_user_tasks_and_scripts(wf: Stub) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        service("book_hotel", f"book-{kind}"),
        '<bpmn:userTask id="call_hotel" isForCompensation="true"><bpmn:extensionElements>'
        "<zeebe:userTask/></bpmn:extensionElements></bpmn:userTask>",
        compensated_by("book_hotel", "call_hotel"),
        service("book_flight", f"book-{kind}"),
        script("forget_flight", "=true", "flight_cancelled").replace(
            '<bpmn:scriptTask id="forget_flight"',
            '<bpmn:scriptTask id="forget_flight" isForCompensation="true"',
        ),
        compensated_by("book_flight", "forget_flight"),
        throw("undo"),
        end(),
        *chain("start", "book_hotel", "book_flight", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"book-{kind}")
    # The script undid the flight at once; the hotel waits for a person.
    waiting = await until_waiting_at(wf, running.id, "undo", "call_hotel")
    assert waiting.variables["flight_cancelled"] is True
    (task,) = (await wf.ListUserTasks(pb.ListUserTasksRequest(execution_id=running.id))).user_tasks
    await wf.CompleteUserTask(pb.CompleteUserTaskRequest(user_task_id=task.id))
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-4:] == ["forget_flight", "call_hotel", "undo", "end"]


async def test_each_instance_of_a_multi_instance_activity_is_compensated(wf: Stub) -> None:
    kind = new_kind()
    rooms = service("book_room", f"book-{kind}").replace(
        "</bpmn:serviceTask>", f"{marker('=rooms', 'room')}</bpmn:serviceTask>"
    )
    bpmn = definitions(
        start(),
        rooms,
        handler("undo_book_room", f"undo-{kind}"),
        compensated_by("book_room", "undo_book_room"),
        throw("undo", "book_room"),
        end(),
        *chain("start", "book_room", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn), rooms=["a", "b", "c"])
    booked = await jobs(wf, f"book-{kind}", count=10, wait=0)
    assert len(booked) == 3
    for job in booked:
        await wf.CompleteJob(pb.CompleteJobRequest(job_key=job.job_key))
    for _ in range(3):
        assert await complete_next(wf, f"undo-{kind}") == "undo_book_room"
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_room") == 3


async def test_a_completion_after_a_compensation_in_the_same_step_is_recorded(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    """The step that completes the last handler drops its record and may
    record a new completion (a task done at once after the throw event)."""
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        throw("undo"),
        '<bpmn:task id="note"/>',
        handler("undo_note", f"undo-{kind}"),
        compensated_by("note", "undo_note"),
        service("wait_here", f"wait-{kind}"),
        end(),
        *chain("start", "book_hotel", "undo", "note", "wait_here", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    await until_waiting_at(wf, running.id, "wait_here")
    assert await stored_records(admin, running.id) == ["note"]


# ---------------------------------------------------------------- scopes


async def test_a_completed_sub_process_is_compensated_from_its_parent(wf: Stub) -> None:
    kind = new_kind()
    trip = subprocess(
        "trip",
        start("trip_start"),
        *compensable("book_hotel", kind),
        *compensable("book_flight", kind),
        end("trip_end"),
        *chain("trip_start", "book_hotel", "book_flight", "trip_end", prefix="t"),
    )
    bpmn = definitions(
        start(),
        trip,
        throw("undo", "trip"),
        end(),
        *chain("start", "trip", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"book-{kind}")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_flight"
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    await until_status(wf, running.id, COMPLETED)


async def test_a_throw_inside_a_sub_process_compensates_that_sub_process_only(
    wf: Stub,
) -> None:
    kind = new_kind()
    trip = subprocess(
        "trip",
        start("trip_start"),
        *compensable("book_flight", kind),
        throw("undo_trip"),
        end("trip_end"),
        *chain("trip_start", "book_flight", "undo_trip", "trip_end", prefix="t"),
    )
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        trip,
        end(),
        *chain("start", "book_hotel", "trip", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    await complete_next(wf, f"book-{kind}")
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_flight"
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_hotel") == 0


async def test_an_error_event_sub_process_compensates_the_scope_it_is_in(wf: Stub) -> None:
    kind = new_kind()
    on_error = (
        '<bpmn:subProcess id="on_error" triggeredByEvent="true">'
        '<bpmn:startEvent id="caught"><bpmn:errorEventDefinition errorRef="Err_declined"/>'
        "</bpmn:startEvent>"
        f"{throw('undo')}{end('cancelled')}"
        f"{flow('e1', 'caught', 'undo')}{flow('e2', 'undo', 'cancelled')}</bpmn:subProcess>"
    )
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        service("charge", f"charge-{kind}"),
        end(),
        on_error,
        *chain("start", "book_hotel", "charge", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    (charge,) = await jobs(wf, f"charge-{kind}", count=10, wait=0)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=charge.job_key, error_code="declined"))
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-4:] == ["undo_book_hotel", "undo", "cancelled", "on_error"]


async def test_a_throw_terminated_mid_compensation_leaves_its_records_compensable(
    wf: Stub,
) -> None:
    kind = new_kind()
    abort = (
        '<bpmn:subProcess id="on_abort" triggeredByEvent="true">'
        f"{start('aborted', message='abort')}{throw('undo_all', 'book_hotel')}{end('gave_up')}"
        f"{flow('a1', 'aborted', 'undo_all')}{flow('a2', 'undo_all', 'gave_up')}</bpmn:subProcess>"
    )
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        throw("undo"),
        end(),
        abort,
        *chain("start", "book_hotel", "undo", "end"),
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, await deploy(wf, bpmn), user)
    await complete_next(wf, f"book-{kind}")
    (first,) = await jobs(wf, f"undo-{kind}", count=10, wait=0)
    # The event sub-process interrupts the throw event and its handler.
    await publish(wf, "abort", user)
    error = await rpc_error(wf.CompleteJob(pb.CompleteJobRequest(job_key=first.job_key)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await complete_next(wf, f"undo-{kind}") == "undo_book_hotel"
    done = await until_status(wf, running.id, COMPLETED)
    assert path(done)[-3:] == ["undo_all", "gave_up", "on_abort"]


async def test_an_interrupted_sub_process_leaves_nothing_to_compensate(wf: Stub) -> None:
    kind = new_kind()
    trip = subprocess(
        "trip",
        start("trip_start"),
        *compensable("book_hotel", kind),
        service("wait_here", f"wait-{kind}"),
        end("trip_end"),
        *chain("trip_start", "book_hotel", "wait_here", "trip_end", prefix="t"),
    )
    bpmn = definitions(
        start(),
        trip,
        boundary("gave_up", "trip", error="gave_up"),
        throw("undo"),
        end(),
        end("after_trip"),
        *chain("start", "trip", "after_trip"),
        flow("to_undo", "gave_up", "undo"),
        flow("to_end", "undo", "end"),
    )
    running = await start_execution(wf, await deploy(wf, bpmn))
    await complete_next(wf, f"book-{kind}")
    (waiting,) = await jobs(wf, f"wait-{kind}", count=10, wait=0)
    await wf.ThrowError(pb.ThrowErrorRequest(job_key=waiting.job_key, error_code="gave_up"))
    done = await until_status(wf, running.id, COMPLETED)
    assert activated(done, "undo_book_hotel") == 0


# ---------------------------------------------------------------- refused at save


def _saga(*elements: str) -> str:
    return definitions(
        start(),
        service("book_hotel", "book"),
        end(),
        *elements,
        *chain("start", "book_hotel", "end"),
    )


SUB_PROCESS_HANDLER = (
    '<bpmn:subProcess id="undo_hotel" isForCompensation="true">'
    f"{start('u_start')}{end('u_end')}{flow('u1', 'u_start', 'u_end')}</bpmn:subProcess>"
)
MULTI_HANDLER = handler("undo_hotel", "undo").replace(
    "</bpmn:serviceTask>",
    "<bpmn:multiInstanceLoopCharacteristics><bpmn:extensionElements><zeebe:loopCharacteristics"
    ' inputCollection="=[1, 2]"/></bpmn:extensionElements>'
    "</bpmn:multiInstanceLoopCharacteristics></bpmn:serviceTask>",
)
REFUSED = {
    "a sub-process as handler": (
        _saga(SUB_PROCESS_HANDLER, compensated_by("book_hotel", "undo_hotel")),
        "'undo_hotel': a subProcess cannot be a compensation handler",
    ),
    "a multi-instance handler": (
        _saga(MULTI_HANDLER, compensated_by("book_hotel", "undo_hotel")),
        "'undo_hotel': a multi-instance activity cannot be a compensation handler",
    ),
    "a boundary event without a handler": (
        _saga(
            '<bpmn:boundaryEvent id="book_hotel_compensation" attachedToRef="book_hotel">'
            "<bpmn:compensateEventDefinition/></bpmn:boundaryEvent>"
        ),
        "'book_hotel_compensation': a compensation boundary event needs exactly one association"
        " to its compensation handler (found 0)",
    ),
    "a boundary event with two handlers": (
        _saga(
            handler("undo_hotel", "undo"),
            handler("undo_again", "undo"),
            compensated_by("book_hotel", "undo_hotel"),
            '<bpmn:association id="second" sourceRef="book_hotel_compensation"'
            ' targetRef="undo_again"/>',
        ),
        "'book_hotel_compensation': a compensation boundary event needs exactly one association"
        " to its compensation handler (found 2)",
    ),
    "a handler with sequence flows": (
        _saga(
            handler("undo_hotel", "undo"),
            compensated_by("book_hotel", "undo_hotel"),
            end("after_undo"),
            flow("u1", "undo_hotel", "after_undo"),
        ),
        "'undo_hotel': a compensation handler cannot have sequence flows",
    ),
    "a handler without the marker": (
        _saga(service("undo_hotel", "undo"), compensated_by("book_hotel", "undo_hotel")),
        "'undo_hotel': the activity a compensation boundary event is associated with needs"
        ' isForCompensation="true"',
    ),
    "an activityRef to an activity without compensation": (
        definitions(
            start(),
            service("book_hotel", "book"),
            throw("undo", "book_hotel"),
            end(),
            *chain("start", "book_hotel", "undo", "end"),
        ),
        "'undo': activityRef 'book_hotel' must name an activity of the scope the event"
        " compensates that has a compensation boundary event",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_what_compensation_cannot_be_is_refused_naming_the_element(
    wf: Stub, case: str
) -> None:
    bpmn, expected = REFUSED[case]
    assert expected in await refused(wf, bpmn)


# ---------------------------------------------------------------- durability and erase


async def test_killing_the_service_mid_compensation_loses_nothing(
    database: ScratchDatabase, admin: asyncpg.Connection
) -> None:
    """The service process is killed while the first handler's job is out;
    a new one takes that job's completion and runs the next handler."""
    env = service_env(
        database, {"users": free_port(), "workflows": free_port(), "metrics": free_port()}
    )
    address = env["LIFECYCLE_WORKFLOWS_ADDRESS"]
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        *compensable("book_flight", kind),
        throw("undo_end", tag="endEvent"),
        *chain("start", "book_hotel", "book_flight", "undo_end"),
    )
    async with service_process(env) as process, grpc.aio.insecure_channel(address) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        running = await start_execution(stub, await deploy(stub, bpmn))
        await complete_next(stub, f"book-{kind}")
        await complete_next(stub, f"book-{kind}")
        (first,) = await jobs(stub, f"undo-{kind}", count=10, wait=0)
        assert first.element_id == "undo_book_flight"
        process.kill()
    assert await stored_records(admin, running.id) == ["book_hotel", "book_flight"]
    async with service_process(env), grpc.aio.insecure_channel(address) as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await stub.CompleteJob(pb.CompleteJobRequest(job_key=first.job_key))
        assert await complete_next(stub, f"undo-{kind}") == "undo_book_hotel"
        done = await until_status(stub, running.id, COMPLETED)
    assert activated(done, "undo_book_flight") == activated(done, "undo_book_hotel") == 1
    assert await stored_records(admin, running.id) == []


async def test_an_erase_deletes_the_users_compensation_records(
    wf: Stub, admin: asyncpg.Connection
) -> None:
    kind = new_kind()
    bpmn = definitions(
        start(),
        *compensable("book_hotel", kind),
        service("wait_here", f"wait-{kind}"),
        end(),
        *chain("start", "book_hotel", "wait_here", "end"),
    )
    user = str(uuid.uuid4())
    running = await start_execution(wf, await deploy(wf, bpmn), user)
    await complete_next(wf, f"book-{kind}")
    assert await stored_records(admin, running.id) == ["book_hotel"]
    await wf.EraseUserData(pb.EraseUserDataRequest(user_id=user))
    assert await stored_records(admin, running.id) == []
