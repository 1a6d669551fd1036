"""The daemon actuates examples/physics.yaml's stages as the simulator's ``physics`` resolves them.

Each stage gives different tiers different knobs (power limits for prefill, clock ceilings for
decode, both on one GPU in none): the daemon's resolution against NVML's limits must equal the
simulator's against the profile, and the actuator must leave each fake GPU with exactly that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polca.api.convert import action_from_api
from polca.api.stages import Stage
from polca.control.plan import ResolvedAction
from polca.power.model import ceiling_clock_mhz
from polca.power.profiles import get_profile
from polca.sim.domain import gpu_limits as sim_gpu_limits
from polca.sim.policies import PHYSICS_PLAN
from polca.tooling.policyfile import read_policy
from polca_node.actuator import Actuator
from polca_node.daemon import gpu_limits
from polca_node.gpu.fake_nvml import FakeNvml
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.policies import GpuDecision, Mode, NodeDecision

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "physics.yaml"
TIERS = ("idle", "low", "high")  # GPU i of the fake node runs a pod of TIERS[i]
STAGES = read_policy(str(EXAMPLE)).policy.spec.stages
H100 = get_profile("H100-SXM")  # the fake node's GPUs


class _Quiet:
    def on_write(self, index: int, knob: str) -> None: ...

    def on_failure(self, index: int, knob: str, reason: str) -> None: ...


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_each_stage_lands_on_the_gpus_as_simulated(
    stage: Stage, h100_fake: FakeNvml, h100_backend: NvmlBackend
) -> None:
    infos = h100_backend.inventory().by_index()
    simulated = next(s for s in PHYSICS_PLAN.stages if s.name == stage.name)
    wanted: dict[int, ResolvedAction] = {}
    for index, tier in enumerate(TIERS):
        api_action = stage.actions.get(tier)
        daemon = (
            action_from_api(api_action).resolve(gpu_limits(infos[index]))
            if api_action is not None
            else ResolvedAction()
        )
        sim = simulated.action_for(tier).resolve(sim_gpu_limits(H100))
        assert daemon == sim, f"{stage.name}/{tier}"
        wanted[index] = daemon
    gpus = {i: GpuDecision(index=i, enforce=a, report=a) for i, a in wanted.items()}
    actuator = Actuator(h100_backend, infos, _Quiet())
    assert actuator.apply(NodeDecision(Mode.ENFORCE, "test", (), gpus)).complete
    for index, action in wanted.items():
        gpu = h100_fake.gpus[index]
        if action.clock_ceiling_mhz is None:
            assert gpu.clock_ceiling_mhz is None
        else:  # NVML locks the supported clock at or below; the simulator's model does too
            assert gpu.clock_ceiling_mhz == ceiling_clock_mhz(H100, action.clock_ceiling_mhz)
        expected_mw = round((action.power_limit_w or H100.default_limit_w) * 1000)
        assert gpu.power_limit_mw == expected_mw
