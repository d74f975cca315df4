"""``--gpus`` to physical GPU ids, so that ``--gpus 2,3`` runs on GPUs 2 and 3.

Ids on the command line are physical ids as ``nvidia-smi`` shows them. When
``CUDA_VISIBLE_DEVICES`` already narrows what this process sees, the ids must be among
the visible ones, and each selected GPU also gets its ordinal in this process (what
``torch.device("cuda", ordinal)`` needs here).
"""

from __future__ import annotations

from dataclasses import dataclass

ALL = "all"


@dataclass(frozen=True)
class GpuSpec:
    """What the user asked for: every visible GPU, or these physical ids in this order."""

    ids: tuple[str, ...] | None

    @property
    def all(self) -> bool:
        return self.ids is None


@dataclass(frozen=True)
class GpuDevice:
    physical_id: str
    """The id to put in a worker's ``CUDA_VISIBLE_DEVICES`` (a number or a GPU UUID)."""
    ordinal: int
    """The device's index in this process (``cuda:<ordinal>``)."""


ALL_GPUS = GpuSpec(None)


def parse_gpu_spec(text: str) -> GpuSpec:
    """``all`` or comma-separated non-negative integers (or GPU UUIDs), no repeats."""
    cleaned = text.strip()
    if cleaned.lower() == ALL:
        return ALL_GPUS
    parts = [part.strip() for part in cleaned.split(",")]
    if not cleaned or any(not part for part in parts):
        raise ValueError(f"{text!r} is not 'all' or a list of GPU ids such as 0,1")
    ids = tuple(_normalize_id(part, text) for part in parts)
    repeated = sorted({gpu for gpu in ids if ids.count(gpu) > 1})
    if repeated:
        raise ValueError(f"GPU {', '.join(repeated)} given more than once in {text!r}")
    return GpuSpec(ids)


def _normalize_id(part: str, text: str) -> str:
    if part.isdigit():
        return str(int(part))
    if part.startswith(("GPU-", "MIG-")):
        return part
    raise ValueError(f"{part!r} in {text!r} is not a GPU id (a number such as 0, or a GPU UUID)")


def visible_ids(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """Physical ids this process can use, in its ordinal order.

    CUDA reads ``CUDA_VISIBLE_DEVICES`` up to the first invalid entry and ignores
    entries past the devices that exist; ``device_count`` is what torch reports.
    """
    if cuda_visible_devices is None:
        return [str(i) for i in range(device_count)]
    ids: list[str] = []
    for entry in cuda_visible_devices.split(","):
        part = entry.strip()
        if part.isdigit():
            ids.append(str(int(part)))
        elif part.startswith(("GPU-", "MIG-")):
            ids.append(part)
        else:
            break
    return ids[:device_count]


def resolve_gpus(
    spec: GpuSpec, cuda_visible_devices: str | None, device_count: int
) -> list[GpuDevice]:
    """The GPUs to run on, or ValueError saying which requested id cannot be used."""
    visible = visible_ids(cuda_visible_devices, device_count)
    if not visible:
        raise ValueError("no GPU is visible to this process")
    if spec.ids is None:
        return [GpuDevice(gpu, ordinal) for ordinal, gpu in enumerate(visible)]
    missing = [gpu for gpu in spec.ids if gpu not in visible]
    if missing:
        where = (
            f"CUDA_VISIBLE_DEVICES={cuda_visible_devices}"
            if cuda_visible_devices is not None
            else f"{device_count} GPU(s) on this machine"
        )
        raise ValueError(
            f"GPU {', '.join(missing)} not available (visible: {', '.join(visible)}; {where})"
        )
    return [GpuDevice(gpu, visible.index(gpu)) for gpu in spec.ids]
