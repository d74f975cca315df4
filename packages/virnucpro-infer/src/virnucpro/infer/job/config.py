"""What a run computes and where it runs: the one place every default lives.

:class:`RunConfig` is fixed when a run starts; ``resume`` reads it back from the
manifest (``RunConfig.from_manifest``), so a resumed run computes exactly what the
first session would have. :class:`Placement` (devices, processes, loader workers) may
change between sessions. The Python API's keywords and the cli's options both take
their defaults from here. Torch-free: the cli imports it for its option defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnucpro.infer.job.errors import ConfigError
from virnucpro.infer.job.gpus import ALL_GPUS, GpuSpec, parse_gpu_spec

DEFAULT_MODEL = "esm2_t36_3B_UR50D"
AUTO = "auto"
INPUT_TYPES = ("protein", "dna")
CHUNK_SIZES = (300, 500)
POOLINGS = ("mean", "max", "bos", "per_token")
PRECISIONS = (AUTO, "fp32", "bf16", "fp16")
DEVICES = (AUTO, "cpu", "cuda")
DEFAULT_FORMAT = "hdf5"
LONG_MODES = ("truncate", "full", "window")
STORE_DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "lzf", "gzip")
ALL_LAYERS = "all"


def pooling_name(name: str) -> str:
    """Output name of a pooling: ``per-token`` (as typed) is stored as ``per_token``."""
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that decides a run's numbers, as asked (``auto`` and ``None`` are
    resolved when the run starts and recorded in the manifest)."""

    inputs: tuple[Path, ...]
    model: str = DEFAULT_MODEL
    """A fair-esm model name, a weights path, or any spec a model plugin understands."""
    random_weights: bool = False
    """Seeded random weights of the named architecture: tests and demos, not biology."""
    seed: int = 0
    input_type: str = "protein"
    """``dna``: VirNucPro reads mode (six-frame translation of chunked reads)."""
    chunk_size: int = 300
    strict: bool = False
    """Refuse, before any work, input holding characters that are not standard amino
    acid letters (otherwise they are counted, said, and dropped or read as unknown)."""
    layers: tuple[int, ...] | str | None = None
    """fair-esm layer numbers (0 = embeddings, negative from the last); None = the last;
    ``"all"`` = 0 to the last."""
    pooling: tuple[str, ...] = ("mean",)
    precision: str = AUTO
    """``auto``: bf16 on GPUs that have it (fp16 on older ones), fp32 on the CPU."""
    token_budget: int | None = None
    """Tokens per packed batch; None = from free GPU memory (4096 on the CPU)."""
    max_length: int = 1022
    """Residues per pass (fair-esm's limit, what ESM-2 was trained on)."""
    long: str = "truncate"
    """Sequences over ``max_length``: ``truncate`` (as fair-esm's extract), ``full`` (one
    pass over the whole sequence) or ``window`` (overlapping windows, averaged)."""
    window_overlap: int = 256
    """Residues shared by consecutive windows (``long="window"``)."""
    checkpoint_every: int = 10_000
    """Checkpoint after this many sequences ..."""
    checkpoint_interval: float = 300.0
    """... or after this many seconds ..."""
    checkpoint_bytes: int = 2**30
    """... or once the rows waiting for a checkpoint hold this many bytes (bounded host
    memory whatever the pooling), whichever comes first."""
    store_dtype: str = "float32"
    """The dtype of every stored embedding (on the device, in checkpoints and output):
    ``float16`` halves the disk and host memory. No ``bfloat16``: numpy and h5py have
    no such type, so readers would see opaque 2-byte values."""
    compression: str = "none"
    """Compression of the merged embedding datasets: ``none`` (at GPU speed compression
    costs more time than it saves), ``lzf`` (fast) or ``gzip`` (smaller, slow)."""
    output_format: str = DEFAULT_FORMAT
    """The registered output writer that turns the checkpoints into the result."""
    keep_checkpoints: bool = False
    """Keep the checkpoints after the output is written and verified (by default they
    are removed, so the data is on disk once)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(Path(p) for p in self.inputs))
        object.__setattr__(
            self, "pooling", tuple(dict.fromkeys(pooling_name(p) for p in self.pooling))
        )
        if self.layers is not None and self.layers != ALL_LAYERS:
            _check(not isinstance(self.layers, str), "layers", f"numbers or {ALL_LAYERS!r}")
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        _check(bool(self.inputs), "inputs", "no input file given")
        _check(self.input_type in INPUT_TYPES, "input_type", f"one of {INPUT_TYPES}")
        _check(self.chunk_size in CHUNK_SIZES, "chunk_size", f"one of {CHUNK_SIZES}")
        _check(bool(self.pooling), "pooling", "at least one pooling")
        unknown = [p for p in self.pooling if p not in POOLINGS]
        _check(not unknown, "pooling", f"{unknown} not among {POOLINGS}")
        _check(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        _check(
            self.token_budget is None or self.token_budget >= 1,
            "token_budget",
            "a positive number of tokens or None (auto)",
        )
        _check(self.max_length >= 0, "max_length", "0 (never truncate) or more")
        _check(self.long in LONG_MODES, "long", f"one of {LONG_MODES}")
        if self.long == "window":
            _check(
                0 <= self.window_overlap < self.max_length,
                "window_overlap",
                f"0 or more and less than max_length ({self.max_length})",
            )
        _check(self.checkpoint_every >= 1, "checkpoint_every", "at least 1")
        _check(self.checkpoint_interval > 0, "checkpoint_interval", "more than 0 seconds")
        _check(self.checkpoint_bytes >= 1, "checkpoint_bytes", "at least 1 byte")
        if self.store_dtype == "bfloat16":
            raise ConfigError(
                "store_dtype: bfloat16 cannot be stored readably (numpy and h5py have no "
                "bfloat16); use float16 (half the size of float32) or float32"
            )
        _check(self.store_dtype in STORE_DTYPES, "store_dtype", f"one of {STORE_DTYPES}")
        _check(self.compression in COMPRESSIONS, "compression", f"one of {COMPRESSIONS}")
        if isinstance(self.layers, tuple):
            _check(bool(self.layers), "layers", "at least one layer, or None for the last")
            _check(len(set(self.layers)) == len(self.layers), "layers", "no layer twice")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RunConfig:
        """The configuration a manifest records, with its ``auto`` values resolved."""
        try:
            return cls(
                inputs=tuple(Path(p) for p in manifest["inputs"]),
                model=manifest["model"],
                random_weights=bool(manifest["random_weights"]),
                seed=int(manifest["seed"] or 0),
                input_type=manifest["input_type"],
                chunk_size=int(manifest["chunk_size"]),
                strict=bool(manifest.get("strict", False)),
                layers=tuple(int(layer) for layer in manifest["layers"]),
                pooling=tuple(manifest["pooling"]),
                precision=manifest["precision"],
                token_budget=None
                if manifest.get("token_budget_auto")
                else int(manifest["token_budget"]),
                max_length=int(manifest["max_length"]),
                long=manifest.get("long", "truncate"),
                window_overlap=int(manifest.get("window_overlap", 256)),
                checkpoint_every=int(manifest["checkpoint_every"]),
                checkpoint_interval=float(manifest["checkpoint_interval"]),
                checkpoint_bytes=int(manifest["checkpoint_bytes"]),
                store_dtype=manifest.get("store_dtype", "float32"),
                compression=manifest.get("compression", "none"),
                output_format=manifest.get("output_format", DEFAULT_FORMAT),
                keep_checkpoints=bool(manifest.get("keep_checkpoints", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the run's manifest is incomplete or damaged ({exc})") from None


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where and how a session runs; a resumed run may choose differently."""

    device: str = AUTO
    """``auto``: every selected GPU if there is one, else the CPU."""
    gpus: GpuSpec = field(default=ALL_GPUS)
    """Physical GPU ids as nvidia-smi shows them, or all."""
    processes: int = 1
    """CPU runs: worker processes through the same queue as several GPUs."""
    workers: int = 0
    """Data loader processes of a single-device run or a torchrun rank. 0 packs batches
    in the main thread (over 5M residues/s, overlapping the GPU's previous batch): on
    one H200 a run with 2 loader processes took 44 s to its first batch, while the
    several-GPU path, which always packs in-process, took 27 s."""
    stall_timeout: float = 900.0
    """Seconds without progress after which a worker is killed and its work re-queued,
    or a torchrun job ended naming the stalled rank (stretched to three times the
    slowest batch seen)."""

    def __post_init__(self) -> None:
        # The field holds a GpuSpec; "0,1" or [0, 1] are still accepted and parsed here.
        object.__setattr__(self, "gpus", as_gpu_spec(self.gpus))
        _check(self.device in DEVICES, "device", f"one of {DEVICES}")
        _check(self.processes >= 1, "processes", "at least 1")
        _check(self.workers >= 0, "workers", "0 or more")
        _check(self.stall_timeout > 0, "stall_timeout", "more than 0 seconds")
        if not self.gpus.all and self.device == "cpu":
            raise ConfigError("gpus: cannot select GPUs with device cpu")


def as_gpu_spec(gpus: str | Sequence[int] | GpuSpec) -> GpuSpec:
    """``gpus`` for :class:`Placement`: a GpuSpec as it is, ``"all"``, ``"0,1"`` or
    ``[0, 1]`` parsed; ConfigError when it names no valid GPUs."""
    if isinstance(gpus, GpuSpec):
        return gpus
    text = gpus if isinstance(gpus, str) else ",".join(str(g) for g in gpus)
    try:
        return parse_gpu_spec(text)
    except ValueError as exc:
        raise ConfigError(f"gpus: {exc}") from None


def resolve_layers(layers: Sequence[int] | str | None, num_layers: int) -> tuple[int, ...]:
    """Layers in fair-esm numbering (0 = embeddings, ``num_layers`` = last), sorted."""
    if layers is None:
        return (num_layers,)
    if isinstance(layers, str):
        if layers != ALL_LAYERS:
            raise ConfigError(f"layers: {layers!r} is not layer numbers or {ALL_LAYERS!r}")
        return tuple(range(num_layers + 1))
    resolved = []
    for layer in layers:
        number = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= number <= num_layers:
            raise ConfigError(
                f"layers: layer {layer} does not exist (the model has layers 0..{num_layers})"
            )
        resolved.append(number)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"layers: {tuple(layers)} name the same layer twice")
    return tuple(sorted(resolved))
