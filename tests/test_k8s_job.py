"""The Kubernetes deployments, rendered into the Job a worker would create: no cluster, no server.

For each deployment of deploy/prefect.yaml on the Kubernetes pool, the test reads prefect.yaml with
Prefect's own `prefect deploy` loader and templating (so `{{ $STYLIZE_IMAGE }}` is substituted from the
environment as at deploy time), builds prefect-kubernetes' job configuration from
deploy/k8s-job-template.json and the deployment's job variables, prepares it for a flow run with real
client-side Prefect objects, exactly as the worker does before it calls the Kubernetes API, and then
reads the manifest into the Kubernetes API models (the client prefect-kubernetes sends it with),
checking that nothing was dropped and that it says what we mean: the image, the GPUs, the command,
the user, the flow run's id.

Also: the pool name is one name in the Dockerfile, prefect.yaml and the run book.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import uuid
from types import SimpleNamespace

import pytest

from .test_deploy_files import DEPLOY, DOCKERFILE, PREFECT_YAML, ROOT, TEMPLATE  # noqa: E402

RUN_BOOK = DEPLOY / "README.md"

worker = pytest.importorskip(
    "prefect_kubernetes.worker",
    reason="prefect-kubernetes is missing: install the project's `kubernetes` extra (pip install -e '.[kubernetes]', part of make setup)",
)
k8s_client = pytest.importorskip(
    "kubernetes_asyncio.client",
    reason="kubernetes_asyncio (a dependency of prefect-kubernetes) is missing: install the `kubernetes` extra",
)

from prefect.cli.deploy._config import _load_deploy_configs_and_actions  # noqa: E402
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool  # noqa: E402
from prefect.client.schemas.responses import DeploymentResponse  # noqa: E402
from prefect.utilities.templating import apply_values  # noqa: E402

IMAGE = "registry.example.com/stylize/stylize-worker:0.1.0-test"
K8S_POOL = "stylize-gpu"
PROCESS_POOL = "stylize-local"
CHECKOUT = "/srv/stylize"  # $PWD where `prefect deploy` runs, for the process pool
DEPLOY_ENV = {"STYLIZE_IMAGE": IMAGE, "RAY_ADDRESS": "ray-head:6379", "PWD": CHECKOUT}
FLOW_NAMES = {"stylize_manifest": "stylize-manifest", "retry_failed": "stylize-retry-failed"}


# --- reading the files as `prefect deploy` and the worker do ----------------------------------------


def load_prefect_yaml() -> tuple[list[dict], dict]:
    from rich.console import Console

    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(stderr=True))
    assert configs, "deploy/prefect.yaml: no deployments (or Prefect's loader rejected the file)"
    return configs, actions


def at_deploy_time(config: dict, actions: dict, environ: dict[str, str]) -> dict:
    """What `prefect deploy` stores for one deployment (prefect/cli/deploy/_core.py, _run_single_deploy):
    the deployment's own pull steps or the file's, `{{ $ENV }}` substituted from the environment, and the
    placeholders still unset after the (here empty) build steps removed."""
    config = copy.deepcopy(config)
    pull = config.get("pull", actions.get("pull")) or []
    with pytest.MonkeyPatch.context() as env:
        for name, value in environ.items():
            env.setenv(name, value)
        config = apply_values(config, dict(os.environ), remove_notset=False)
        config = apply_values(config, {}, warn_on_notset=False, skip_prefixes=["ctx."])
        pull = apply_values(pull, {}, remove_notset=False)
    config["pull"] = pull
    return config


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def prefect_yaml() -> tuple[list[dict], dict]:
    return load_prefect_yaml()


@pytest.fixture(scope="module")
def deployments(prefect_yaml) -> dict[str, dict]:
    configs, actions = prefect_yaml
    names = [c.get("name") for c in configs]
    assert len(names) == len(set(names)), f"deployment names repeat: {names} (`prefect deploy --name` must pick one)"
    return {c["name"]: at_deploy_time(c, actions, DEPLOY_ENV) for c in configs}


def flow_name(config: dict) -> str:
    return FLOW_NAMES[config["entrypoint"].rpartition(":")[2]]


def on_pool(deployments: dict[str, dict], pool: str) -> dict[str, dict]:
    return {name: c for name, c in deployments.items() if c["work_pool"]["name"] == pool}


def dockerfile_last(keyword: str) -> str:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    values = [line.split(None, 1)[1] for line in lines if line.upper().startswith(keyword + " ")]
    assert values, f"the Dockerfile has no {keyword}"
    return values[-1]


class NoPrefectAPI:
    """The worker resolves {"$ref": block} and {{ prefect.variables.x }} through the API; this template
    and these job variables use neither, so any call is a failure."""

    def __getattr__(self, name):
        raise AssertionError(f"rendering the job called the Prefect API ({name}); the template should not need it")


async def render(template: dict, deployment_name: str, config: dict) -> tuple[dict, dict, FlowRun]:
    """The job manifest the worker submits for a flow run of this deployment, and its job variables."""
    flow = Flow(id=uuid.uuid4(), name=flow_name(config))
    deployment = DeploymentResponse(
        id=uuid.uuid4(),
        name=deployment_name,
        flow_id=flow.id,
        entrypoint=config["entrypoint"],
        parameters=config.get("parameters") or {},
        job_variables=config["work_pool"].get("job_variables") or {},
        pull_steps=config["pull"],
        work_pool_name=config["work_pool"]["name"],
        tags=config.get("tags") or [],
    )
    flow_run = FlowRun(
        id=uuid.uuid4(),
        name="purple-stylist",
        flow_id=flow.id,
        deployment_id=deployment.id,
        parameters={"manifest": "s3://museum-batch/jobs/today.yaml", **deployment.parameters},
    )
    pool = WorkPool(name=config["work_pool"]["name"], type="kubernetes", base_job_template=template)
    # prefect.workers.base.BaseJobConfiguration.resolve_for_flow_run: deployment, then flow-run variables
    values = {**deployment.job_variables, **(flow_run.job_variables or {})}
    configuration = await worker.KubernetesWorkerJobConfiguration.from_template_and_values(
        base_job_template=pool.base_job_template, values=values, client=NoPrefectAPI()
    )
    configuration.prepare_for_flow_run(
        flow_run=flow_run, deployment=deployment, flow=flow, work_pool=pool, worker_name="stylize-gpu-worker-0"
    )
    return configuration.job_manifest, values, flow_run


async def as_kubernetes_job(manifest: dict):
    """The manifest read into kubernetes' V1Job (as a response body would be) and written back."""
    async with k8s_client.ApiClient() as api:
        job = api.deserialize(SimpleNamespace(data=json.dumps(manifest)), "V1Job")
        return job, api.sanitize_for_serialization(job)


def comparable(value, path: str = ""):
    """The manifest as the Kubernetes models write it back: quantities are strings, nulls are left out."""
    if isinstance(value, dict):
        return {k: comparable(v, f"{path}/{k}") for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [comparable(v, f"{path}/{i}") for i, v in enumerate(value)]
    if "/resources/" in path and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def differences(want, got, path: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        found = [f"{path}/{k}: dropped by the Kubernetes models (not a field there)" for k in want if k not in got]
        found += [f"{path}/{k}: added" for k in got if k not in want]
        for k in want.keys() & got.keys():
            found += differences(want[k], got[k], f"{path}/{k}")
        return found
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in differences(w, g, f"{path}/{i}")]
    return [] if want == got and type(want) is type(got) else [f"{path}: {want!r} became {got!r}"]


# --- one pool name everywhere -----------------------------------------------------------------------


def test_one_kubernetes_pool_name_in_dockerfile_prefect_yaml_and_run_book(deployments):
    cmd = json.loads(dockerfile_last("CMD"))
    dockerfile_pool = cmd[cmd.index("--pool") + 1]
    assert dockerfile_pool == K8S_POOL, f"the image's worker polls {dockerfile_pool!r}, not {K8S_POOL!r}"

    k8s = on_pool(deployments, K8S_POOL)
    assert k8s, f"deploy/prefect.yaml has no deployment on the Kubernetes pool {K8S_POOL}"
    pools = {c["work_pool"]["name"] for c in deployments.values()}
    assert pools == {PROCESS_POOL, K8S_POOL}, f"pools in deploy/prefect.yaml: {sorted(pools)}"

    run_book = RUN_BOOK.read_text()
    assert (
        f"prefect work-pool create {K8S_POOL} --type kubernetes --base-job-template deploy/k8s-job-template.json"
        in run_book
    ), "the run book does not create the Kubernetes pool with the job template"
    assert f"prefect worker start --pool {K8S_POOL}" in run_book, "the run book does not start a worker on the pool"
    named = set(re.findall(r"--pool[ =]([\w.-]+)", run_book))
    named |= set(re.findall(r"work-pool (?:create|set-concurrency-limit|inspect) ([\w.-]+)", run_book))
    assert named <= {PROCESS_POOL, K8S_POOL, "other-pool"}, f"the run book names other pools: {sorted(named)}"
    assert "gpu-pool" not in run_book and "gpu-pool" not in DOCKERFILE.read_text()
    assert K8S_POOL in TEMPLATE.read_text(), "the template's description should name the pool it is for"


# --- what prefect.yaml declares ---------------------------------------------------------------------


def test_process_deployments_stay_on_the_process_pool(deployments):
    local = on_pool(deployments, PROCESS_POOL)
    assert {"nightly", "ad-hoc", "retry-failed", "ray"} <= set(local)
    for name, config in local.items():
        assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": CHECKOUT}}], (
            f"{name}: a process worker runs from the deployer's checkout ($PWD), got {config['pull']}"
        )
        assert not config["work_pool"].get("job_variables"), f"{name}: job variables on a process pool"


def test_ray_deployment(deployments):
    ray = deployments["ray"]
    assert flow_name(ray) == "stylize-manifest"
    assert ray["parameters"]["runner"] == "ray"
    assert ray["parameters"]["ray_address"] == "ray-head:6379", "ray_address is taken from RAY_ADDRESS at deploy time"


def test_kubernetes_deployments_pull_from_the_image_workdir(deployments):
    workdir = dockerfile_last("WORKDIR")
    for name, config in on_pool(deployments, K8S_POOL).items():
        assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}], (
            f"{name}: the pod has no checkout; its code is in the image's WORKDIR {workdir}, pull is {config['pull']}"
        )
        entry = config["entrypoint"].partition(":")[0]
        assert (ROOT / entry).is_file(), f"{name}: {entry} is not in the repository (the image copies flows/ there)"


def test_parent_fans_out_to_the_gpu_deployment(deployments):
    parent, child = deployments["k8s"], deployments["k8s-gpu"]
    assert flow_name(parent) == flow_name(child) == "stylize-manifest"
    assert parent["parameters"]["runner"] == "deployment"
    assert parent["parameters"]["shard_deployment"] == f"{flow_name(child)}/k8s-gpu"
    shards = parent["parameters"]["shards"]
    assert isinstance(shards, int) and shards >= 2, f"shards = {shards!r}: spread batches over several pods"
    assert parent["work_pool"]["job_variables"]["gpus"] == 0, "the parent only submits child runs: no GPU"
    assert child["parameters"]["runner"] == "local", "a child pod runs its share on its own GPU"
    assert child["work_pool"]["job_variables"].get("gpus", 1) == 1
    assert "pair_ids" not in child["parameters"], "pair_ids is the parent's to set per child run"
    retry = deployments["retry-failed-k8s"]
    assert flow_name(retry) == "stylize-retry-failed" and retry["parameters"]["runner"] == "local"


def test_deployment_parameters_are_the_flows(deployments):
    """Every parameter a deployment sets is one its flow takes (the server would refuse the rest)."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    module = importlib.import_module("flows.pipeline")
    if "shard_deployment" not in parameter_schema(module.stylize_manifest).properties:
        pytest.skip("flows/pipeline.py does not take runner/ray_address/shard_deployment/shards yet")
    for name, config in deployments.items():
        function = getattr(module, config["entrypoint"].rpartition(":")[2])
        accepted = set(parameter_schema(function).properties)
        unknown = set(config.get("parameters") or {}) - accepted
        assert not unknown, f"{name}: {flow_name(config)} takes no {sorted(unknown)}"


def test_job_variables_conform_to_the_template(template, deployments):
    import jsonschema

    for name, config in on_pool(deployments, K8S_POOL).items():
        variables = config["work_pool"]["job_variables"]
        assert variables.get("image") == IMAGE, f"{name}: job variables must set the image (STYLIZE_IMAGE)"
        assert set(variables) <= set(template["variables"]["properties"]), (
            f"{name}: job variables the template does not use: {sorted(set(variables) - set(template['variables']['properties']))}"
        )
        jsonschema.validate(variables, template["variables"])


def test_without_stylize_image_the_image_would_be_empty(prefect_yaml, monkeypatch):
    """Why the run book sets STYLIZE_IMAGE: `prefect deploy` replaces an unset `{{ $VAR }}` with ""."""
    monkeypatch.delenv("STYLIZE_IMAGE", raising=False)
    configs, actions = prefect_yaml
    config = at_deploy_time(next(c for c in configs if c["name"] == "k8s-gpu"), actions, {})
    assert config["work_pool"]["job_variables"]["image"] == ""


# --- the Job the worker would create ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "gpus"), [("k8s", 0), ("k8s-gpu", 1), ("retry-failed-k8s", 1)])
def test_rendered_job_is_a_valid_kubernetes_job(template, deployments, name, gpus):
    config = deployments[name]
    manifest, values, flow_run = asyncio.run(render(template, name, config))

    unrendered = [text for text in strings(manifest) if "{{" in text or "}}" in text]
    assert not unrendered, f"unrendered placeholders: {unrendered}"

    job, written_back = asyncio.run(as_kubernetes_job(manifest))
    assert isinstance(job, k8s_client.V1Job)
    lost = differences(comparable(manifest), written_back)
    assert not lost, "the Kubernetes models do not read the manifest as written:\n" + "\n".join(lost)

    assert job.api_version == "batch/v1" and job.kind == "Job"
    assert job.metadata.generate_name and job.metadata.namespace == "default"
    assert job.metadata.labels["prefect.io/flow-run-id"] == str(flow_run.id)
    assert job.metadata.labels["prefect.io/deployment-name"] == name
    assert job.spec.backoff_limit == 0 and job.spec.parallelism == 1 and job.spec.completions == 1
    assert job.spec.ttl_seconds_after_finished == template["variables"]["properties"]["finished_job_ttl"]["default"]

    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.run_as_user == int(dockerfile_last("USER").split(":")[0])
    assert job.spec.template.metadata.labels["prefect.io/flow-run-id"] == str(flow_run.id)

    (container,) = pod.containers
    assert container.image == IMAGE
    assert container.image_pull_policy == "IfNotPresent"
    assert container.command == json.loads(dockerfile_last("ENTRYPOINT"))[:2] == ["/usr/bin/tini", "--"]
    assert container.args == ["prefect", "flow-run", "execute"]
    assert container.security_context.allow_privilege_escalation is False
    assert container.resources.limits["nvidia.com/gpu"] == str(gpus)
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    assert container.resources.requests["cpu"] == values.get("cpu_request", defaults["cpu_request"])
    assert container.resources.requests["memory"] == values.get("memory_request", defaults["memory_request"])
    assert container.resources.limits["memory"] == values.get("memory_limit", defaults["memory_limit"])

    env = {item.name: item.value for item in container.env}
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule", "backoffLimit 0: an evicted run is rescheduled"
    assert all(isinstance(value, str) for value in env.values())


def test_a_flow_run_override_changes_only_what_it_names(template, deployments):
    """`prefect deployment run stylize-manifest/k8s-gpu --job-variable gpus=2` style overrides still render."""
    config = copy.deepcopy(deployments["k8s-gpu"])
    config["work_pool"]["job_variables"] = {**config["work_pool"]["job_variables"], "gpus": 2, "env": {"AWS_REGION": "eu-west-1"}}
    manifest, _, _ = asyncio.run(render(template, "k8s-gpu", config))
    job, _ = asyncio.run(as_kubernetes_job(manifest))
    (container,) = job.spec.template.spec.containers
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert {e.name: e.value for e in container.env}["AWS_REGION"] == "eu-west-1"
    assert container.image == IMAGE
