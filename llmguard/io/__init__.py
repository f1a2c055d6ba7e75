"""The streaming checkpoint engine: read per tensor, compute in float32, write atomically.

Everything here works one tensor at a time so memory does not grow with model size:
:class:`SafetensorsFile` reads single tensors with ``pread``, :class:`Checkpoint` resolves a
model directory through its index, :class:`LoraAdapter` computes ΔW from adapter files alone,
and :class:`StreamingWriter` writes HF-layout shards into a temporary directory that is renamed
into place only when complete.
"""

from llmguard.io.checkpoint import Checkpoint, open_checkpoint
from llmguard.io.lora import LoraAdapter, is_adapter_dir
from llmguard.io.safetensors_file import SafetensorsFile, TensorInfo
from llmguard.io.writer import StreamingWriter, TensorPlan

__all__ = [
    "Checkpoint",
    "LoraAdapter",
    "SafetensorsFile",
    "StreamingWriter",
    "TensorInfo",
    "TensorPlan",
    "is_adapter_dir",
    "open_checkpoint",
]
