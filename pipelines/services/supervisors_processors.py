"""Supervisor sensor: one live run per stream processor (normalizer, feature processor).

A run that failed, was canceled or whose worker died (Dagster's run monitoring marks it
failed) no longer counts as alive, so the next evaluation requests a new one; the new
process fences the dead one's Kafka producer and resumes from the committed offsets and
state. Requests carry the service tag, whose concurrency limit of one (dagster.yaml) holds
even if two evaluations race. One sensor for both (pipelines/services/builder.py's
`supervisor`), as it always was: its name is what `ticklake status` and the UI show.
"""

import dagster as dg

from pipelines.services.builder import supervisor
from pipelines.services.processors import (
    FEATURE_PROCESSOR,
    NORMALIZER,
    feature_processor_service,
    normalizer_service,
)

stream_processors_supervisor = supervisor(
    "stream_processors_supervisor",
    [(NORMALIZER, normalizer_service), (FEATURE_PROCESSOR, feature_processor_service)],
    description="Keeps one normalizer and one feature processor run alive.",
)

#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(sensors=[stream_processors_supervisor])
