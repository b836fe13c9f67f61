import pytest

from consensus.spec import SpecError, parse_job


def job(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "j", "tasks": [{"name": "a", "command": ["true"]}]}
    base.update(over)
    return base


def test_defaults() -> None:
    spec = parse_job(job())
    t = spec.tasks[0]
    assert spec.priority_class == 1 and t.max_attempts == 3 and t.resources.cpus_m == 200


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], ""),
        (job(name=""), "name"),
        (job(priority="HIGH"), "priority"),
        (job(tasks=[]), "tasks"),
        (job(tasks=[{"name": "a", "command": "true"}]), "tasks[0].command"),
        (job(tasks=[{"name": "a", "command": []}]), "tasks[0].command"),
        (
            job(tasks=[{"name": "a", "command": ["true"], "resources": {"cpus": -1}}]),
            "tasks[0].resources.cpus",
        ),
        (
            job(tasks=[{"name": "a", "command": ["true"], "resources": {"mem_mb": "1"}}]),
            "tasks[0].resources.mem_mb",
        ),
        (job(tasks=[{"name": "a", "command": ["true"], "depends_on": ["zz"]}]), "tasks[0].depends_on"),
        (job(tasks=[{"name": "a", "command": ["true"], "max_attempts": 0}]), "tasks[0].max_attempts"),
        (job(tasks=[{"name": "a", "command": ["true"], "bogus": 1}]), "tasks[0]"),
        (job(tasks=[{"name": "a", "command": ["true"]}, {"name": "a", "command": ["true"]}]), "tasks"),
        (job(not_before="tomorrow"), "not_before"),
    ],
)
def test_invalid_specs_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_job(doc)
    assert e.value.field == field


def test_cycles_are_reported_with_their_path() -> None:
    doc = job(
        tasks=[
            {"name": "a", "command": ["x"], "depends_on": ["c"]},
            {"name": "b", "command": ["x"], "depends_on": ["a"]},
            {"name": "c", "command": ["x"], "depends_on": ["b"]},
        ]
    )
    with pytest.raises(SpecError, match=r"dependency cycle: (\w -> ){3}\w"):
        parse_job(doc)


def test_self_dependency() -> None:
    with pytest.raises(SpecError, match="itself"):
        parse_job(job(tasks=[{"name": "a", "command": ["x"], "depends_on": ["a"]}]))
