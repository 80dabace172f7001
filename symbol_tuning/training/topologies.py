"""Accelerator facts the memory planner needs: HBM and bf16 peak per chip kind, chips per host.

A `Topology` names a chip kind and how many chips (and slices) a run gets; gin topology files bind it
as `topologies.Topology` next to the run's `partitioning.MeshConfig`. Figures are the vendors'
published per-chip numbers (dense bf16, no sparsity; the peaks are training/flops.py's table); "cpu"
stands for simulated host devices (`--xla_force_host_platform_device_count`) and is only used to test the
planner itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gin

from symbol_tuning.training.flops import peak_by_name

GiB = 1 << 30


@dataclass(frozen=True)
class Chip:
    """One accelerator chip: memory, peak bf16 matmul rate and how many a host usually carries."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    chips_per_host: int
    platform: str  # the JAX platform name of its devices ("tpu", "gpu", "cpu")


CHIPS: dict[str, Chip] = {
    "tpu_v4": Chip("tpu_v4", 32 * GiB, peak_by_name("TPU v4"), 4, "tpu"),
    "tpu_v5e": Chip("tpu_v5e", 16 * GiB, peak_by_name("TPU v5e"), 4, "tpu"),
    "tpu_v5p": Chip("tpu_v5p", 95 * GiB, peak_by_name("TPU v5p"), 4, "tpu"),
    "tpu_v6e": Chip("tpu_v6e", 32 * GiB, peak_by_name("TPU v6e"), 4, "tpu"),
    "h100": Chip("h100", 80 * GiB, peak_by_name("H100 SXM"), 8, "gpu"),
    "h200": Chip("h200", 141 * GiB, peak_by_name("H200 SXM"), 8, "gpu"),
    "a100": Chip("a100", 80 * GiB, peak_by_name("A100"), 8, "gpu"),
    "cpu": Chip("cpu", 8 * GiB, 1e12, 8, "cpu"),
}


def get_chip(name: str) -> Chip:
    """The Chip called `name`; ValueError listing the known kinds otherwise."""
    if name not in CHIPS:
        raise ValueError(f"topology: unknown chip kind {name!r}; known: {sorted(CHIPS)}")
    return CHIPS[name]


@dataclass(frozen=True)
class Topology:
    """`num_chips` chips of kind `chip` in `num_slices` slices (TPU multi-slice: DCN between slices).

    `chips_per_host` defaults to the chip kind's usual host size; set it where a slice differs (a
    single-host v5e-8 VM has 8 chips, while larger v5e slices use 4-chip hosts).
    """

    chip: str
    num_chips: int
    num_slices: int = 1
    chips_per_host: int | None = None

    def __post_init__(self):
        get_chip(self.chip)
        if self.num_chips < 1 or self.num_slices < 1:
            raise ValueError(f"topology {self.chip}: num_chips={self.num_chips} and num_slices={self.num_slices} "
                             "must be >= 1")
        if self.num_chips % self.num_slices:
            raise ValueError(f"topology {self.chip}: {self.num_chips} chips do not split evenly into "
                             f"{self.num_slices} slices")
        if self.chips_per_host is not None and self.chips_per_host < 1:
            raise ValueError(f"topology {self.chip}: chips_per_host={self.chips_per_host} must be >= 1")

    @property
    def spec(self) -> Chip:
        return get_chip(self.chip)

    @property
    def hosts(self) -> int:
        """Hosts (processes) the run spans."""
        per_host = self.chips_per_host or self.spec.chips_per_host
        return max(1, math.ceil(self.num_chips / per_host))

    @property
    def hbm_bytes(self) -> int:
        return self.spec.hbm_bytes

    @property
    def peak_bf16_flops(self) -> float:
        """Peak bf16 rate of the whole topology."""
        return self.spec.peak_bf16_flops * self.num_chips

    def describe(self) -> str:
        slices = f" in {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.num_chips} x {self.chip}{slices}, {self.hosts} host(s), "
                f"{self.hbm_bytes / GiB:.0f} GiB HBM per chip")


gin.external_configurable(Topology, name="Topology", module="topologies")
