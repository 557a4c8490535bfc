"""reverie: a native replay engine for PyTorch.

>>> import reverie as rv
>>> buf = rv.ReplayBuffer(1_000_000, sampler=rv.Prioritized(alpha=0.6, beta=0.4), seed=0)
"""

from . import _core
from ._batch import Batch
from ._buffer import ReplayBuffer
from ._device import DeviceReplayBuffer, cuda_available
from ._episodes import EpisodeBuffer, sequence_priority
from ._limiter import RateLimiter
from ._micro import MicroBatches, micro_batches
from ._minari import from_minari, to_minari
from ._npz import from_npz, to_npz
from ._partitioned import Partition, PartitionedBuffer
from ._parts import (
    ClassBalanced,
    Fifo,
    KeepTopK,
    KeyedArchive,
    Prioritized,
    Quotas,
    Recency,
    Reservoir,
    Threshold,
    Uniform,
)
from ._spec import Field
from ._trajectory import (
    GroupFilter,
    GroupLayout,
    MeanFilter,
    NonZeroFilter,
    Packed,
    RaggedBatch,
    StdFilter,
    TrajectoryBuffer,
    refill_group,
    rollout_quota,
)

__version__ = "0.1.0"


def cuda_built() -> bool:
    """Whether this build contains the CUDA kernels."""
    return bool(_core.cuda_built())


__all__ = [
    "Batch", "ClassBalanced", "GroupFilter", "GroupLayout", "MeanFilter", "NonZeroFilter", "Packed",
    "RaggedBatch", "StdFilter", "TrajectoryBuffer", "refill_group", "rollout_quota", "DeviceReplayBuffer", "EpisodeBuffer", "Field", "Fifo", "KeepTopK",
    "KeyedArchive", "MicroBatches", "Partition", "PartitionedBuffer", "Prioritized", "Quotas", "RateLimiter", "Recency",
    "ReplayBuffer", "Reservoir", "Threshold", "Uniform", "cuda_available",
    "cuda_built", "from_minari", "from_npz", "micro_batches", "sequence_priority", "to_minari", "to_npz",
    "__version__",
]
