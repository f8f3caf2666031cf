"""The compiled segment definitions, kept in memory by each replica.

Every segment's definition is parsed once per version and compiled (its
in_segment references resolved) once until some segment changes: a change may
reach every segment that references it, and definitions change rarely while
users change constantly. Each use case brings the cache up to date, on its
own connection, before it reads it (`load`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from conditions import SEGMENT, Condition, SegmentDefinition, parse_condition, resolve
from runtime.database import Executor
from services.segments import store
from services.segments.domain import CompiledSegment, Segment, segment_not_found


class CompiledSegments:
    def __init__(self) -> None:
        self._segments: dict[uuid.UUID, Segment] = {}
        self._parsed: dict[uuid.UUID, Condition] = {}
        self._definitions: dict[uuid.UUID, SegmentDefinition] = {}
        self._compiled: dict[uuid.UUID, CompiledSegment] = {}

    async def load(self, conn: Executor) -> None:
        """Brings the cache up to date with the segments as `conn` sees them."""
        versions = await store.segment_versions(conn)
        stale = [
            segment_id
            for segment_id, updated_at in versions.items()
            if segment_id not in self._segments
            or self._segments[segment_id].updated_at != updated_at
        ]
        removed = self._segments.keys() - versions.keys()
        if not stale and not removed:
            return
        fresh = await store.segments_by_id(conn, stale)
        # From here on without awaiting, so that no reader sees half an update.
        for segment_id in removed:
            del self._segments[segment_id]
            del self._parsed[segment_id]
        for segment in fresh:
            self._segments[segment.id] = segment
            self._parsed[segment.id] = parse_condition(segment.conditions, "conditions", SEGMENT)
        self._definitions = {
            segment_id: SegmentDefinition(segment.stages, self._parsed[segment_id])
            for segment_id, segment in self._segments.items()
        }
        self._compiled.clear()

    def definitions(self) -> Mapping[uuid.UUID, SegmentDefinition]:
        return self._definitions

    def compile(self, segment_id: uuid.UUID) -> CompiledSegment:
        compiled = self._compiled.get(segment_id)
        if compiled is None:
            segment = self._segments.get(segment_id)
            if segment is None:
                raise segment_not_found(segment_id)
            condition = resolve(self._parsed[segment_id], self.definitions(), (segment_id,))
            compiled = CompiledSegment.of(segment, condition)
            self._compiled[segment_id] = compiled
        return compiled

    def all(self) -> list[CompiledSegment]:
        return [self.compile(segment_id) for segment_id in self._segments]
