"""Read TensorBoard event files back (shared by the tests)."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_events(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tags(logdir) -> dict:
    return read_events(logdir).Tags()
