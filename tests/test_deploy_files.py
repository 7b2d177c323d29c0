"""Lint the deployment files that cannot be built here: no Docker, no cluster, no network.

deploy/Dockerfile is parsed into its instructions and checked for what a GPU worker image must have;
deploy/k8s-job-template.json is checked the way Prefect checks a base job template, rendered with
Prefect's own templating, and compared with the Dockerfile it runs; deploy/prefect.yaml, where it
exists, must name flows that exist.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TEMPLATE = DEPLOY / "k8s-job-template.json"
PREFECT_YAML = DEPLOY / "prefect.yaml"

# A base job template placeholder, as Prefect's templating finds them: "{{ name }}", "{{name}}".
PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")
# nvidia/cuda:<major.minor.patch>-[cudnn[N]-]runtime-<os>, optionally with a digest.
CUDA_RUNTIME = re.compile(
    r"^(?:docker\.io/)?nvidia/cuda:(?P<cuda>\d+\.\d+\.\d+)-(?:cudnn\d*-)?runtime-(?P<os>ubuntu\d+\.\d+|ubi\d+|rockylinux\d+)"
    r"(?:@sha256:[0-9a-f]{64})?$"
)


# --- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def shell_commands(script: str) -> list[list[str]]:
    """A RUN's shell form split into its simple commands (at &&, ||, ;, |), each as shell words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not an exec-form list: {args}"
    return value


def env_assignments(args: str) -> dict[str, str]:
    """ENV a=b c="d e" → {a: b, c: d e}; the legacy `ENV a b` form too."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return dockerfile_instructions(DOCKERFILE.read_text())


def of(instructions, keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def index_of(instructions, keyword: str) -> int:
    """The position of the last `keyword`, the one that takes effect."""
    positions = [i for i, (kw, _) in enumerate(instructions) if kw == keyword]
    assert positions, f"the Dockerfile has no {keyword}"
    return positions[-1]


def entrypoint(instructions) -> list[str]:
    return exec_form(instructions[index_of(instructions, "ENTRYPOINT")][1])


def final_env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in of(instructions, "ENV"):
        env.update(env_assignments(args))
    return env


def runtime_user(instructions) -> str:
    users = [args for kw, args in instructions[: index_of(instructions, "ENTRYPOINT")] if kw == "USER"]
    assert users, "no USER before the ENTRYPOINT: the worker would run as root"
    return users[-1]


def test_base_image_is_a_pinned_cuda_runtime(instructions):
    froms = of(instructions, "FROM")
    assert froms, "no FROM"
    image = froms[-1].split()[0]  # the final stage is the image that ships
    assert "$" not in image, f"FROM {image}: the base image must be literal, not an ARG"
    match = CUDA_RUNTIME.match(image)
    assert match, f"FROM {image}: not a pinned nvidia/cuda runtime image (major.minor.patch-[cudnn-]runtime-os)"


def test_base_image_cuda_matches_torch(instructions):
    """torch's wheels carry their own CUDA libraries; the base image's CUDA (and so the driver the NVIDIA
    runtime demands) must be the same major.minor, or pods start on nodes whose driver torch cannot use."""
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU build: no CUDA version to compare with")
    image = of(instructions, "FROM")[-1].split()[0]
    cuda = CUDA_RUNTIME.match(image)["cuda"]
    assert cuda.rsplit(".", 1)[0] == torch.version.cuda, (
        f"{image} is CUDA {cuda}, torch {torch.__version__} is built for CUDA {torch.version.cuda}"
    )


def test_runs_as_a_non_root_user(instructions):
    user = runtime_user(instructions).split(":")[0]
    assert user not in {"root", "0", ""}, f"USER {user} is root"
    # numeric, so that a pod's `runAsNonRoot: true` can verify it without reading /etc/passwd
    assert user.isdigit(), f"USER {user}: give a numeric uid"


def test_entrypoint_starts_a_prefect_worker_and_cmd_names_the_pool(instructions):
    command = entrypoint(instructions)
    assert any(command[i : i + 3] == ["prefect", "worker", "start"] for i in range(len(command))), command
    cmd = exec_form(of(instructions, "CMD")[-1])
    assert "--pool" in cmd and cmd[cmd.index("--pool") + 1], f"CMD {cmd} does not name a work pool"
    assert "--pool" not in command, "the pool belongs in CMD, so that `docker run IMAGE --pool X` overrides it"


def test_prefect_runs_offline(instructions):
    env = final_env(instructions)
    assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    assert env.get("DO_NOT_TRACK") == "1"
    assert "PREFECT_API_URL" not in env and "PREFECT_API_KEY" not in env, "the API and its key come at run time"


def test_weights_are_fetched_at_build_time_into_the_cache(instructions):
    fetch = [i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and "stylize weights fetch vgg16" in args]
    assert fetch, "no RUN with `stylize weights fetch vgg16`"
    cache = final_env(instructions[: fetch[0]]).get("STYLIZE_CACHE")
    assert cache and cache.startswith("/"), "STYLIZE_CACHE must be set (absolute) before the weights are fetched"
    assert final_env(instructions).get("STYLIZE_CACHE") == cache, "the runtime must look where the build fetched"
    users = [args for kw, args in instructions[: fetch[0]] if kw == "USER"]
    fetched_as = users[-1].split(":")[0] if users else "root"
    if fetched_as != runtime_user(instructions).split(":")[0]:
        # fetched by another user (root): that RUN must make the cache readable to everyone
        assert re.search(r"chmod\s+(?:-R\s+)?\S*[ao]\+r", instructions[fetch[0]][1]), (
            "the weights are fetched as another user than the runtime's and not made readable (chmod -R a+rX)"
        )


def is_the_project(token: str) -> bool:
    """`.` or `.[extra,...]`: the build context, i.e. this project."""
    return re.fullmatch(r"\.(\[[\w,\-]+\])?", token) is not None


def test_the_project_is_installed_non_editable_and_additions_are_pinned(instructions):
    installs = []
    for args in of(instructions, "RUN"):
        for tokens in shell_commands(args):
            for start in range(len(tokens) - 1):
                if tokens[start].endswith("pip") and tokens[start + 1] == "install":
                    installs.append([t for t in tokens[start + 2 :] if not t.startswith(">")])
                    break
    assert installs, "no pip install"
    assert any(is_the_project(t) for tokens in installs for t in tokens), "the project itself (`pip install .`) is not installed"
    takes_value = {"-r", "--requirement", "-c", "--constraint", "--index-url", "-i", "--extra-index-url"}
    for tokens in installs:
        assert not {"-e", "--editable"} & set(tokens), f"pip install {' '.join(tokens)}: must not be editable"
        skip = False
        for token in tokens:
            if skip:
                skip = False
                continue
            if token in takes_value:
                skip = True
                continue
            if token.startswith("-") or is_the_project(token):
                continue
            assert "==" in token, f"pip install {token}: unpinned (the project's own pins come from pyproject.toml)"


def test_every_install_is_held_to_the_lock(instructions):
    """requirements.lock pins the whole tree (`make lock`): each pip install reads it (as requirements or as
    constraints), after a COPY has brought it into the image."""
    lock_copied = False
    installs = 0
    for keyword, args in instructions:
        if keyword == "COPY" and "requirements.lock" in shlex.split(args)[:-1]:
            lock_copied = True
        if keyword != "RUN":
            continue
        for tokens in shell_commands(args):
            for start in range(len(tokens) - 1):
                if tokens[start].endswith("pip") and tokens[start + 1] == "install":
                    installs += 1
                    words = tokens[start + 2 :]
                    held = any(
                        word in {"-r", "--requirement", "-c", "--constraint"} and value == "requirements.lock"
                        for word, value in zip(words, words[1:])
                    )
                    assert held, f"pip install {' '.join(words)}: not held to requirements.lock (-c requirements.lock)"
                    assert lock_copied, "a pip install runs before requirements.lock is copied into the image"
                    break
    assert installs, "no pip install"


def dockerignore_entries() -> set[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return {line.rstrip("/") for line in lines if line and not line.startswith("#")}


def test_copied_sources_exist_and_are_not_ignored(instructions):
    ignored = dockerignore_entries()
    for args in of(instructions, "COPY"):
        tokens = shlex.split(args)
        if any(token.startswith("--from") for token in tokens):
            continue  # from another stage or image, not from the context
        paths = [token for token in tokens if not token.startswith("--")]
        for source in paths[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
            assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing at the repository root"
    entries = dockerignore_entries()
    for needed in (".venv", ".cache", "out", ".git"):
        assert needed in entries, f".dockerignore does not exclude {needed}"
    assert entries & {"__pycache__", "**/__pycache__"}, ".dockerignore does not exclude __pycache__"


# --- the Kubernetes work-pool base job template ----------------------------------------------------


# What Prefect's kubernetes worker reads from job_configuration besides the manifest itself.
WORKER_SETTINGS = (
    "command",
    "env",
    "labels",
    "name",
    "namespace",
    "cluster_config",
    "stream_output",
    "job_watch_timeout_seconds",
    "pod_watch_timeout_seconds",
)
# Job variables a deployment may well set (only those the template declares are used).
DEPLOYMENT_OVERRIDES = {
    "image": "registry.example.com/stylize-worker:0.1.0",
    "env": {"AWS_REGION": "eu-west-1"},
    "labels": {"team": "art"},
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
}


@pytest.fixture(scope="module")
def template() -> dict:
    assert TEMPLATE.is_file(), f"{TEMPLATE} is missing"
    return json.loads(TEMPLATE.read_text())


def placeholders(value) -> set[str]:
    return set(PLACEHOLDER.findall(json.dumps(value)))


def container(manifest: dict) -> dict:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "Prefect's kubernetes worker runs the first container; keep exactly one"
    return containers[0]


def defaults(template: dict) -> dict:
    """The values a flow run gets when neither the deployment nor the run overrides them (as Prefect
    takes them: variables whose default is null are left out, so their keys disappear)."""
    return {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if spec.get("default") is not None
    }


def test_template_shape(template):
    assert set(template) == {"job_configuration", "variables"}
    assert template["variables"].get("type") == "object"
    assert isinstance(template["variables"].get("properties"), dict) and template["variables"]["properties"]
    config = template["job_configuration"]
    for key in WORKER_SETTINGS + ("job_manifest",):
        assert key in config, f"job_configuration.{key} is missing"


def test_every_placeholder_is_a_declared_variable_and_every_variable_is_used(template):
    used = placeholders(template["job_configuration"])
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"undeclared placeholders: {sorted(used - declared)}"
    assert declared <= used, f"variables nothing uses: {sorted(declared - used)}"
    for name in WORKER_SETTINGS + ("image", "image_pull_policy", "finished_job_ttl"):
        assert name in declared, f"variable {name} (one Prefect's kubernetes worker expects) is missing"


def test_prefect_accepts_the_template(template):
    """The server's own check, run by `prefect work-pool create --base-job-template`."""
    from prefect.server.schemas.actions import WorkPoolCreate, validate_base_job_template

    validate_base_job_template(copy.deepcopy(template))
    WorkPoolCreate(name="gpu-pool", type="kubernetes", base_job_template=copy.deepcopy(template))


def test_variable_defaults_conform_to_their_schema(template):
    import jsonschema

    schema = template["variables"]
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(defaults(template), schema)
    jsonschema.validate(DEPLOYMENT_OVERRIDES, schema)
    for name in ("cpu_request", "memory_request", "memory_limit"):
        if name in schema["properties"]:  # a null quantity would reach the API server as null: refuse it
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({name: None}, schema)


def test_job_manifest_one_gpu_never_restarted(template):
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["spec"]["backoffLimit"] == 0, "Prefect retries; Kubernetes must not run a flow run twice"
    assert manifest["spec"].get("parallelism", 1) == 1 and manifest["spec"].get("completions", 1) == 1
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert not {"parallelism", "completions"} & set(pod), "parallelism and completions are Job fields, not the pod's"
    job_container = container(manifest)
    assert job_container["name"] == "prefect-job"
    assert job_container["image"] == "{{ image }}"
    assert job_container["imagePullPolicy"] == "{{ image_pull_policy }}"
    assert job_container["args"] == "{{ command }}"
    assert job_container["env"] == "{{ env }}"
    gpu = job_container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == "{{ gpus }}", f"nvidia.com/gpu limit is {gpu!r}, want the `gpus` variable"
    gpus = template["variables"]["properties"]["gpus"]
    assert gpus["type"] == "integer" and gpus["default"] == 1 and gpus.get("minimum") == 0, (
        "`gpus`: one GPU per flow run unless a deployment (the fan-out parent) asks for 0"
    )


def test_job_container_runs_the_flow_not_the_worker(template, instructions):
    """The image's ENTRYPOINT starts a worker; the Job's args (`prefect flow-run execute`) would be
    appended to it unless the container's `command` replaces it: with the same init, without the worker."""
    job_container = container(template["job_configuration"]["job_manifest"])
    image_entrypoint = entrypoint(instructions)
    init = image_entrypoint[: image_entrypoint.index("prefect")]  # e.g. ["/usr/bin/tini", "--"], or nothing
    command = job_container.get("command")
    assert isinstance(command, list) and command, f"the job container must set `command`, replacing ENTRYPOINT {image_entrypoint}"
    if init:
        assert command == init, f"the job container's command {command} should be the image's init {init}"
    assert "worker" not in command


def test_pod_runs_as_the_image_user(template, instructions):
    user = runtime_user(instructions).split(":")[0]
    if not user.isdigit():
        pytest.skip(f"USER {user} is not numeric (test_runs_as_a_non_root_user says so)")
    uid = int(user)
    security = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"].get("securityContext", {})
    if "runAsUser" in security:
        assert security["runAsUser"] == uid, f"pod runAsUser {security['runAsUser']} is not the image's USER {uid}"
    if security.get("runAsNonRoot"):
        assert uid != 0


def test_rendered_with_defaults_and_with_overrides(template):
    """Prefect's own templating, as the worker applies it: nothing left unrendered, the GPU still one."""
    from prefect.utilities.templating import apply_values

    for overrides in ({}, DEPLOYMENT_OVERRIDES):
        values = {**defaults(template), **overrides}
        rendered = apply_values(copy.deepcopy(template["job_configuration"]), values)
        assert not placeholders(rendered), f"unrendered: {placeholders(rendered)}"
        job_container = container(rendered["job_manifest"])
        assert job_container["image"] == values["image"]
        assert job_container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
        for kind in ("requests", "limits"):
            for name, quantity in job_container["resources"].get(kind, {}).items():
                assert isinstance(quantity, (str, int)) and str(quantity), f"resources.{kind}.{name} = {quantity!r}"


def test_prefect_kubernetes_builds_the_job(template):
    """Where prefect-kubernetes is installed (the image has it), its job configuration accepts the rendered
    template and fills in the flow-run command: no server needed."""
    worker = pytest.importorskip("prefect_kubernetes.worker", reason="prefect-kubernetes is installed in the image only")
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values

    rendered = apply_values(copy.deepcopy(template["job_configuration"]), defaults(template))
    configuration = worker.KubernetesWorkerJobConfiguration(**rendered)
    configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="test-run", flow_id=uuid.uuid4()))
    job_container = container(configuration.job_manifest)
    assert job_container["args"] == ["prefect", "flow-run", "execute"]
    assert job_container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)


# --- deploy/prefect.yaml (written elsewhere; checked when present) --------------------------------------


def test_prefect_yaml_deployments_name_real_flows():
    if not PREFECT_YAML.is_file():
        pytest.skip("deploy/prefect.yaml does not exist yet")
    import yaml
    from prefect import Flow

    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(document, dict), "deploy/prefect.yaml is not a mapping"
    deployments = document.get("deployments") or []
    assert deployments, "deploy/prefect.yaml declares no deployments"
    for deployment in deployments:
        name = deployment.get("name", "?")
        target = deployment.get("entrypoint")
        assert isinstance(target, str) and ":" in target, f"deployment {name}: entrypoint {target!r} is not PATH:FUNCTION"
        where, _, function = target.rpartition(":")
        if where.endswith(".py"):
            # relative to the directory `prefect deploy` runs in: the repository root, or deploy/ itself
            candidates = [(base / where).resolve() for base in (ROOT, DEPLOY)]
            path = next((c for c in candidates if c.is_file()), None)
            assert path is not None, f"deployment {name}: {where} does not exist"
            assert path.is_relative_to(ROOT), f"deployment {name}: {where} is outside the repository"
            module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        else:
            module_name = where
        module = importlib.import_module(module_name)
        assert hasattr(module, function), f"deployment {name}: {module_name} has no {function}"
        assert isinstance(getattr(module, function), Flow), f"deployment {name}: {module_name}.{function} is not a flow"
