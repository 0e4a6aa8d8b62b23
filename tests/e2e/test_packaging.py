"""The ways users load Vigil other than `make run` stay consistent with it."""

from __future__ import annotations

import yaml

from harness import HARNESS_CONFIG, ROOT, _wasm_filter


def harness():
    return yaml.safe_load(HARNESS_CONFIG.read_text())


def cluster_ports(doc) -> dict[str, int]:
    return {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
        for c in doc["static_resources"]["clusters"]
    }


def test_docker_compose_runs_the_harness_config_and_its_ports():
    compose = yaml.safe_load((ROOT / "envoy" / "docker-compose.yaml").read_text())
    services = compose["services"]
    envoy = services["envoy"]
    wasm_file = _wasm_filter(harness())["vm_config"]["code"]["local"]["filename"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in envoy["volumes"]}
    assert mounts["/vigil/envoy/envoy.yaml"] == "./envoy.yaml"
    assert f"{envoy['working_dir']}/{wasm_file}" in mounts
    assert "--concurrency 2" in " ".join(envoy["command"])
    ports = cluster_ports(harness())
    assert str(ports["demo_upstream"]) in services["demo-upstream"]["command"]
    assert str(ports["vigil_ml"]) in services["mock-ml"]["command"]
    for name in ("demo-upstream", "mock-ml"):
        assert services[name]["network_mode"] == "service:envoy"
        script = services[name]["command"][1].removeprefix("/")
        assert (ROOT / script).exists(), script


def test_istio_wasmplugin_config_is_accepted_by_the_real_filter(stack_factory):
    plugin = yaml.safe_load((ROOT / "envoy" / "istio" / "wasmplugin.yaml").read_text())
    assert plugin["kind"] == "WasmPlugin"
    stack = stack_factory(plugin["spec"]["pluginConfig"], name="istio")
    status, _, _ = stack.request("/", headers={"x-user-id": "istio-user"})
    assert status == 200
