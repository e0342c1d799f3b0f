"""DAG order, parallel groups and cycles."""

from __future__ import annotations

from kata.compile import plan
from kata.graph import find_cycle, levels, topo_order
from kata.loader import load_text


def test_topological_order_breaks_ties_by_config_order() -> None:
    deps = {"z": (), "a": ("z",), "m": (), "b": ("m", "z")}
    order, left = topo_order(deps)
    assert order == ("z", "a", "m", "b") and left == ()
    assert levels(order, deps) == (("z", "m"), ("a", "b"))


def test_a_long_chain_needs_no_recursion() -> None:
    deps = {f"s{i}": ((f"s{i - 1}",) if i else ()) for i in range(5000)}
    order, _ = topo_order(deps)
    assert order[0] == "s0" and order[-1] == "s4999"
    assert len(levels(order, deps)) == 5000
    deps["s0"] = ("s4999",)
    order, left = topo_order(deps)
    assert order == () and len(find_cycle(deps, left)) == 5001


def test_cycle_is_in_run_order() -> None:
    deps = {"a": ("c",), "b": ("a",), "c": ("b",), "x": ()}
    _, left = topo_order(deps)
    cycle = find_cycle(deps, left)
    assert cycle[0] == cycle[-1]
    for before, after in zip(cycle, cycle[1:]):
        assert before in deps[after]  # each step runs before the next


def test_plan_of_the_overview_example() -> None:
    p = plan(load_text("""\
steps:
  - {name: build, image: x}
  - {name: unit-test, image: x, depends_on: [build]}
  - {name: integration-test, image: x, depends_on: [build]}
  - {name: deploy, image: x, depends_on: [unit-test, integration-test, build]}
"""))
    assert p.levels == (("build",), ("unit-test", "integration-test"), ("deploy",))
    assert p.order == ("build", "unit-test", "integration-test", "deploy")
