"""What can be handed out (a Device) and what a server asks for (a Request). Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Device:
    """One allocatable unit: a whole GPU, or one MIG slice of a GPU, named by UUID."""

    uuid: str
    model: str = ""
    memory_mib: int = 0
    mig_profile: str | None = None  # e.g. "1g.10gb"; None for a whole GPU
    parent: str | None = None  # UUID of the GPU a MIG slice belongs to
    index: int = 0  # NVML index of a whole GPU; a MIG slice's index among its GPU's slices
    parent_index: int = 0  # NVML index of a MIG slice's GPU
    node: str = ""  # the Swarm node (its id) the device sits on; "" on a single Docker host

    @property
    def order(self) -> tuple[int, int, str]:
        """Neighbouring devices sort together: NVML index order, slices after their GPU's index."""
        if self.is_mig:
            return (self.parent_index, self.index, self.uuid)
        return (self.index, -1, self.uuid)

    @property
    def is_mig(self) -> bool:
        return self.mig_profile is not None

    @property
    def kind(self) -> str:
        """What a user would call it: the MIG profile, or the GPU model."""
        return self.mig_profile or self.model or "GPU"


@dataclass(frozen=True)
class Request:
    """What one server asks for: `count` whole GPUs (optionally of a model) or MIG slices of a profile."""

    count: int = 1
    mig_profile: str | None = None
    model: str | None = None
    node: str | None = None  # only devices of this Swarm node (the user's home node); None: any node

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"a GPU request needs count >= 1, got {self.count}")
        if self.mig_profile and self.model:
            raise ValueError("a GPU request names a MIG profile or a GPU model, not both")

    def accepts(self, device: Device) -> bool:
        if self.node is not None and device.node != self.node:
            return False
        if self.mig_profile is not None:
            return device.mig_profile == self.mig_profile
        if device.is_mig:
            return False
        return self.model is None or device.model == self.model

    @property
    def label(self) -> str:
        what = self.mig_profile or self.model or "GPU"
        return what if self.count == 1 else f"{self.count} x {what}"
