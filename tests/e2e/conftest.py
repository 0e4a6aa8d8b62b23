import pytest

from harness import Stack, envoy_binary, wasm_path


def pytest_sessionstart(session):
    # Fail loudly (never skip) when the stack cannot run at all.
    envoy_binary()
    wasm_path()


@pytest.fixture
def stack_factory(tmp_path):
    """Starts stacks with a given filter configuration; stops them all after the test."""
    started: list[Stack] = []

    def start(filter_config: dict | None = None, name: str = "stack", expect_ready: bool = True,
              model_port: int | None = None, clusters: dict[str, int] | None = None) -> Stack:
        workdir = tmp_path / f"{name}{len(started)}"
        workdir.mkdir()
        stack = Stack(workdir, filter_config, model_port=model_port, clusters=clusters)
        started.append(stack)
        return stack.start(expect_ready=expect_ready)

    yield start
    for stack in started:
        stack.stop()
