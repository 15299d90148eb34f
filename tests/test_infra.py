"""Offline checks of `infra/`: the deployment files parse, match their schemas (with misspelt fields
caught), obey the rules the schemas cannot express, agree with each other, and run a valid job.

No cluster, registry, network or kubectl: KubeRay's CRD schemas are vendored in
tests/fixtures/kuberay-v1.7.0 (Apache-2.0, see the LICENSE there), core Kubernetes kinds are checked
with `kubernetes-validate` when it is installed, the cluster-launcher config with the schema inside
the installed `ray` package.
"""

from __future__ import annotations

import copy
import functools
import json
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import pytest
import yaml
from conftest import SCHEMAS

from anyv2v_batch.job import JobError, JobSpec, load_job, parse_set

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
KUBERAY_SCHEMAS = SCHEMAS / "kuberay-v1.7.0"
KUBERAY_KINDS = ("RayJob", "RayCronJob", "RayCluster")
EXPECTED_FILES = {
    "rayjob.yaml", "raycronjob.yaml", "raycluster.yaml", "cronjob-submit.yaml", "models.yaml", "cluster.yaml",
}  # fmt: skip
GPU = "nvidia.com/gpu"
MODELS_CLAIM, MODELS_MOUNT, HF_HOME = "anyv2v-models", "/models", "/models/hf"


# ---------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name}: no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: every document must be a mapping"
    return docs


@functools.cache
def manifests() -> tuple[tuple[str, dict], ...]:
    """(file name, document) of every Kubernetes object in infra/ (cluster.yaml is no manifest)."""
    return tuple((p.name, d) for p in sorted(INFRA.glob("*.yaml")) if p.name != "cluster.yaml" for d in load_docs(p))


def the(kind: str) -> dict:
    found = [d for _, d in manifests() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in infra/, found {len(found)}"
    return copy.deepcopy(found[0])


def launcher_config() -> dict:
    return load_docs(INFRA / "cluster.yaml")[0]


# ---------------------------------------------------------------- KubeRay CRD schemas, made strict

OBJECT_META = {  # what a manifest may say in metadata (the CRDs leave it an untyped object)
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}


def forbid_unknown_fields(schema: dict) -> None:
    """Set additionalProperties: false on every object schema that lists its properties (in place).

    Walks subschemas only (never a `properties` map itself, whose keys are field names), leaves maps
    (`additionalProperties` schemas) and objects preserving unknown fields alone."""
    if not isinstance(schema, dict):
        return
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for sub in (schema.get("properties") or {}).values():
        forbid_unknown_fields(sub)
    for sub in (schema.get("patternProperties") or {}).values():
        forbid_unknown_fields(sub)
    for key in ("items", "additionalProperties", "not"):
        forbid_unknown_fields(schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            forbid_unknown_fields(sub)


@functools.cache
def kuberay_schema(kind: str, strict: bool = True) -> dict:
    schema = json.loads((KUBERAY_SCHEMAS / f"{kind}.v1.schema.json").read_text())
    if strict:
        forbid_unknown_fields(schema)
        props = schema["properties"]
        props.pop("status")  # written by the operator, never by a manifest
        props["metadata"] = OBJECT_META
        props["apiVersion"] = {"const": "ray.io/v1"}
        props["kind"] = {"const": kind}
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def schema_errors(doc: dict, strict: bool = True) -> list[str]:
    validator = jsonschema.Draft7Validator(kuberay_schema(doc.get("kind"), strict))
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc))


# ---------------------------------------------------------------- cron and time zones

CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}),
    ("day of week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def _cron_value(text: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number{' or a name' if names else ''}")
    if not low <= int(text) <= high:
        raise ValueError(f"{text} is out of range {low}-{high}")
    return int(text)


def _cron_item(item: str, field: int) -> str | None:
    name, low, high, names = CRON_FIELDS[field]
    base, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        return f"step {step!r} must be a positive number"
    if base == "*" or (base == "?" and name.startswith("day")):
        return None
    start, dash, end = base.partition("-")
    try:
        first = _cron_value(start, low, high, names)
        last = _cron_value(end, low, high, names) if dash else (high if slash else first)
    except ValueError as e:
        return str(e)
    return f"range {base!r} runs backwards" if first > last else None


def cron_problems(schedule: Any) -> list[str]:
    """What is wrong with a standard 5-field cron schedule (what KubeRay and Kubernetes accept):
    numbers in range, `*`, lists, ranges, steps, month / weekday names, `?` in the day fields, and the
    @daily-style macros. Time zones go in `timeZone`, not in the schedule."""
    if not isinstance(schedule, str) or not schedule.strip():
        return ["schedule must be a non-empty string"]
    if "TZ" in schedule:
        return ["TZ= / CRON_TZ= is not allowed in the schedule: use the timeZone field"]
    if schedule.strip() in CRON_MACROS:
        return []
    fields = schedule.split()
    if len(fields) != 5:
        return [f"{schedule!r} has {len(fields)} fields, expected 5 (minute hour day-of-month month day-of-week)"]
    problems = []
    for i, text in enumerate(fields):
        for item in text.split(","):
            problem = _cron_item(item, i) if item else "empty list item"
            if problem:
                problems.append(f"{CRON_FIELDS[i][0]} {item!r}: {problem}")
    return problems


def time_zone_problems(zone: Any) -> list[str]:
    if not isinstance(zone, str) or not zone:
        return ["timeZone must be a non-empty IANA name (leave it out for the controller's zone)"]
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return [f"unknown time zone {zone!r}"]
    return []


# ---------------------------------------------------------------- rules the schemas cannot express

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36, "CronJob": 52}  # KubeRay's, Kubernetes'
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def name_problems(kind: str, name: Any) -> list[str]:
    if not isinstance(name, str) or not DNS1035.match(name):
        return [f"{kind} name {name!r} must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter)"]
    limit = NAME_LIMITS.get(kind, 63)
    return [f"{kind} name {name!r} is longer than {limit} characters"] if len(name) > limit else []


def groups(cluster: dict) -> list[tuple[str, dict]]:
    """(name, group) of the head and every worker group."""
    return [("head", cluster.get("headGroupSpec") or {})] + [
        (g.get("groupName", f"workerGroupSpecs[{i}]"), g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])
    ]


def containers(group: dict) -> list[dict]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def gpus(container: dict) -> float:
    resources = container.get("resources") or {}
    return float((resources.get("limits") or {}).get(GPU, (resources.get("requests") or {}).get(GPU, 0)))


def raycluster_problems(cluster: dict) -> list[str]:
    """KubeRay's own validation of a RayCluster spec (v1.7.0 `ValidateRayClusterSpec`, the parts that do
    not depend on feature gates), and one image for every node."""
    problems = []
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    names = [name for name, _ in groups(cluster)[1:]]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    for name, group in groups(cluster):
        if not containers(group):
            problems.append(f"{name}: the pod template has no container")
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            problems.append(f"{name}: resources are set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{name}: rayStartParams['labels'] is not supported; use the group's labels")
        if name == "head":
            continue
        low, high, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not autoscaling and (low is None or high is None):
            problems.append(f"{name}: minReplicas and maxReplicas are required without autoscaling")
            continue
        if low is not None and high is not None and not (0 <= low <= high):
            problems.append(f"{name}: needs 0 <= minReplicas ({low}) <= maxReplicas ({high})")
        if replicas is not None and low is not None and high is not None and not low <= replicas <= high:
            problems.append(f"{name}: needs minReplicas ({low}) <= replicas ({replicas}) <= maxReplicas ({high})")
    images = {c.get("image") for _, g in groups(cluster) for c in containers(g)}
    if len(images) > 1:
        problems.append(f"head and workers run different images: {sorted(map(str, images))}")
    return problems


def rayjob_problems(spec: dict) -> list[str]:
    """KubeRay's validation of a RayJob spec (v1.7.0 `ValidateRayJobSpec`), which the CRD schema leaves out."""
    problems = []
    shutdown = spec.get("shutdownAfterJobFinishes") is True
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    backoff = spec.get("backoffLimit")
    if bool(spec.get("rayClusterSpec")) == bool(selector):
        problems.append("exactly one of rayClusterSpec and clusterSelector must be set")
    if selector and not selector.get("ray.io/cluster"):
        problems.append("clusterSelector must name the cluster under 'ray.io/cluster'")
    if selector and (spec.get("suspend") or mode == "SidecarMode" or (backoff or 0) > 0):
        problems.append("clusterSelector does not go with suspend, SidecarMode or backoffLimit > 0")
    if "ttlSecondsAfterFinished" in spec and not shutdown:
        problems.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if (spec.get("ttlSecondsAfterFinished") or 0) < 0:
        problems.append("ttlSecondsAfterFinished must be >= 0")
    if spec.get("suspend") and not shutdown:
        problems.append("a suspended RayJob needs shutdownAfterJobFinishes: true")
    if mode not in SUBMISSION_MODES:
        problems.append(f"submissionMode must be one of {sorted(SUBMISSION_MODES)}, got {mode!r}")
    if mode != "InteractiveMode" and not str(spec.get("entrypoint") or "").strip():
        problems.append(f"entrypoint must be set in {mode}")
    if mode == "InteractiveMode" and (backoff or 0) > 0:
        problems.append("InteractiveMode does not go with backoffLimit > 0")
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        problems.append("SidecarMode does not go with submitterPodTemplate / submitterConfig")
    if ((spec.get("deletionStrategy") or {}).get("deletionRules")) and shutdown:
        problems.append("deletionStrategy.deletionRules and shutdownAfterJobFinishes exclude each other")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and not spec[key] > 0:
            problems.append(f"{key} must be > 0")
    if backoff is not None and backoff < 0:
        problems.append("backoffLimit must be >= 0")
    if "runtimeEnvYAML" in spec:
        try:
            if not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                problems.append("runtimeEnvYAML must be a YAML mapping")
        except yaml.YAMLError:
            problems.append("runtimeEnvYAML is not valid YAML")
    if spec.get("rayClusterSpec"):
        problems += raycluster_problems(spec["rayClusterSpec"])
    return problems


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def deployment_problems(cluster: dict) -> list[str]:
    """This project's rules for its clusters: fixed GPU worker groups, nothing on the head, the weights
    volume everywhere and the hub offline on the workers, S3 credentials from a secret."""
    problems = []
    head = cluster.get("headGroupSpec") or {}
    if any(gpus(c) for c in containers(head)) or (head.get("rayStartParams") or {}).get("num-gpus") != "0":
        problems.append("head: must have no GPU and rayStartParams num-gpus: '0'")
    gpu_groups = [(n, g) for n, g in groups(cluster)[1:] if any(gpus(c) for c in containers(g))]
    if not gpu_groups:
        problems.append("no worker group has GPUs")
    if cluster.get("enableInTreeAutoscaling"):
        problems.append("in-tree autoscaling is on: GPU actor pools may not grow (ray #59144); use fixed groups")
    for name, group in gpu_groups:
        sizes = {group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")}
        if len(sizes) != 1:
            problems.append(f"{name}: a GPU group must be fixed: minReplicas = replicas = maxReplicas")
    for name, group in groups(cluster):
        pod = (group.get("template") or {}).get("spec") or {}
        claims = {
            v["name"]
            for v in pod.get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName") == MODELS_CLAIM
        }
        for c in containers(group):
            mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
            if mounts.get(MODELS_MOUNT) not in claims:
                problems.append(f"{name}: {c.get('name')} does not mount the {MODELS_CLAIM} claim at {MODELS_MOUNT}")
            env = env_of(c)
            if name != "head" and (env.get("HF_HOME") != HF_HOME or env.get("HF_HUB_OFFLINE") != "1"):
                problems.append(f"{name}: {c.get('name')} needs HF_HOME={HF_HOME} and HF_HUB_OFFLINE=1")
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if not isinstance(env.get(key), dict) or "secretKeyRef" not in env[key]:
                    problems.append(f"{name}: {c.get('name')} must take {key} from a secret")
    return problems


# ---------------------------------------------------------------- the Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = (pending + line).strip().split(None, 1)
        pending = ""
        out.append((words[0].upper(), words[1] if len(words) > 1 else ""))
    return out


def dockerfile_copies(text: str) -> list[tuple[str, str, str]]:
    """(source, destination, WORKDIR at that point) of every COPY / ADD from the build context."""
    copies, workdir = [], "/"
    for op, args in dockerfile_instructions(text):
        if op == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif op in ("COPY", "ADD"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue  # from another stage or image, not from the repository
            words = [w for w in words if not w.startswith("--")]
            copies += [(src, words[-1], workdir) for src in words[:-1]]
    return copies


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at &&, ||, ; and |, quotes respected)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` in a RUN."""
    out = []
    for op, args in dockerfile_instructions(text):
        if op != "RUN":
            continue
        for words in shell_commands(args):
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                out.append(words[words.index("install") + 1 :])
    return out


def pyproject_ray_range() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if re.match(r"ray\b", d)]
    return re.sub(r"^ray(\[[^\]]*\])?", "", ray).replace(" ", "")


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    ops = dockerfile_instructions(text)
    if not ops or ops[0][0] != "FROM" or not re.match(r"python:3\.11\b", ops[0][1]):
        problems.append("the image must start FROM python:3.11(-slim...)")
    copies = dockerfile_copies(text)
    if not copies:
        problems.append("nothing is copied into the image")
    for src, _, _ in copies:
        if not (ROOT / src).exists():
            problems.append(f"COPY source {src!r} is not in the repository")
    for needed in ("pyproject.toml", "README.md", "anyv2v_batch", "operators", "pipelines"):
        if needed not in {s.rstrip("/") for s, _, _ in copies}:
            problems.append(f"{needed} is not copied into the image (the package needs it)")
    installs = pip_installs(text)
    if not any("." in args for args in installs):
        problems.append("the package itself is not installed (`pip install '.'`)")
    everything = [a for args in installs for a in args]
    ray = [a for a in everything if a.startswith("ray[")]
    if not ray or not any("default" in a.split("]")[0] for a in ray):
        problems.append("ray[default] is not installed (the cluster's dashboard and job server)")
    elif {re.sub(r"^ray\[[^\]]*\]", "", a) for a in ray} != {pyproject_ray_range()}:
        problems.append(f"ray's version range differs from pyproject.toml's ({pyproject_ray_range()}): {ray}")
    if "s3fs" not in everything:
        problems.append("s3fs is not installed (s3:// inputs and outputs)")
    apt = " ".join(args for op, args in ops if op == "RUN" and "apt-get install" in args)
    if not re.search(r"\bwget\b", apt):
        problems.append("wget is not installed (KubeRay's probes exec it)")
    env = " ".join(args for op, args in ops if op == "ENV")
    if f"HF_HOME={HF_HOME}" not in env:
        problems.append(f"HF_HOME is not {HF_HOME}")
    return problems


def image_path_to_repo(path: str) -> Path:
    """A path inside the image -> the repository file it was copied from (per the Dockerfile)."""
    for src, dest, workdir in dockerfile_copies((INFRA / "Dockerfile").read_text()):
        source = ROOT / src.rstrip("/")
        target = posixpath.normpath(posixpath.join(workdir, dest))  # a folder's contents land in dest
        if source.is_file() and (dest.endswith("/") or dest == "."):
            target = posixpath.join(target, source.name)
        if path == target or path.startswith(target + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is not in the image: no COPY in infra/Dockerfile puts it there")


# ---------------------------------------------------------------- the jobs the manifests run


def entrypoints() -> list[tuple[str, list[str], dict]]:
    """(where, argv of `anyv2v-batch`, the cluster spec it runs on) of every job the manifests run."""
    out = []
    rayjob, cron, standing = the("RayJob"), the("RayCronJob"), the("RayCluster")
    out.append(("rayjob.yaml", shlex.split(rayjob["spec"]["entrypoint"]), rayjob["spec"]["rayClusterSpec"]))
    template = cron["spec"]["jobTemplate"]
    out.append(("raycronjob.yaml", shlex.split(template["entrypoint"]), template["rayClusterSpec"]))
    command = submit_command()
    out.append(("cronjob-submit.yaml", command[command.index("--") + 1 :], standing["spec"]))
    return out


def submit_command() -> list[str]:
    pod = the("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return list(container.get("command") or []) + list(container.get("args") or [])


def job_of(argv: list[str]) -> JobSpec:
    """Load the job an `anyv2v-batch run JOB.yaml --set k=v ...` command line runs, as the CLI would."""
    assert argv[:2] in (["anyv2v-batch", "run"], ["anyv2v-batch", "invert"]), f"not an anyv2v-batch job: {argv}"
    job_file, sets, rest = None, [], argv[2:]
    while rest:
        word = rest.pop(0)
        if word == "--set":
            assert rest, "--set without a value"
            sets.append(rest.pop(0))
        elif word.startswith("--set="):
            sets.append(word.removeprefix("--set="))
        elif not word.startswith("-") and job_file is None:
            job_file = word
        else:
            raise AssertionError(f"this test knows the job file and --set only, not {word!r}: extend it")
    assert job_file, f"no job file in {argv}"
    assert job_file.startswith("/opt/anyv2v-batch/pipelines/examples/"), job_file
    return load_job(image_path_to_repo(job_file), parse_set(sets))


def cluster_gpus(cluster: dict) -> int:
    return int(sum((g.get("replicas") or 0) * sum(gpus(c) for c in containers(g)) for _, g in groups(cluster)[1:]))


# ================================================================ tests: files and schemas


def test_every_infra_yaml_parses_and_the_expected_files_are_there():
    found = {p.name for p in INFRA.glob("*.yaml")}
    assert EXPECTED_FILES <= found, f"missing: {EXPECTED_FILES - found}"
    for path in sorted(INFRA.glob("*.yaml")):
        load_docs(path)
    for name, doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind"), f"{name}: a manifest needs apiVersion and kind"
        assert (doc.get("metadata") or {}).get("name"), f"{name}: {doc['kind']} has no metadata.name"
    assert sorted(d["kind"] for _, d in manifests() if d["kind"] in KUBERAY_KINDS) == sorted(KUBERAY_KINDS)


def test_vendored_kuberay_schemas_are_complete():
    for kind in KUBERAY_KINDS:
        schema = kuberay_schema(kind, strict=False)
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"]), kind
    assert "Apache License" in (KUBERAY_SCHEMAS / "LICENSE").read_text()


@pytest.mark.parametrize("kind", KUBERAY_KINDS)
def test_kuberay_manifest_matches_its_crd_schema_with_no_unknown_fields(kind):
    doc = the(kind)
    assert schema_errors(doc) == []
    assert kuberay_schema(kind)["properties"]["spec"]["additionalProperties"] is False


def test_strict_schema_catches_misspelt_fields_the_crd_alone_would_let_through():
    rayjob = the("RayJob")
    spec = rayjob["spec"]
    spec["shutdownAfterJobFinish"] = spec.pop("shutdownAfterJobFinishes")
    assert schema_errors(rayjob, strict=False) == []  # Kubernetes would prune it silently
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(rayjob))

    deep = the("RayJob")
    container = deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    assert any("volumeMount" in e for e in schema_errors(deep))

    cron = the("RayCronJob")
    cron["spec"]["timezone"] = cron["spec"].pop("timeZone")
    cron["metadata"]["lables"] = {"a": "b"}
    errors = schema_errors(cron)
    assert any("timezone" in e for e in errors) and any("lables" in e for e in errors)

    wrong = the("RayCluster")
    wrong["spec"]["workerGroupSpecs"][0]["replicas"] = "8"  # a type error, caught by the CRD itself
    wrong["status"] = {}
    errors = schema_errors(wrong)
    assert any("replicas" in e for e in errors) and any("status" in e for e in errors)


def test_strict_schema_keeps_maps_and_metadata_open():
    """Labels, annotations, rayStartParams and resource maps take any key: only fixed objects are closed."""
    cluster = the("RayCluster")
    cluster["metadata"]["annotations"] = {"example.com/any-key": "x"}
    head = cluster["spec"]["headGroupSpec"]
    head["rayStartParams"]["object-store-memory"] = "1000000000"
    head["template"]["metadata"]["labels"]["team"] = "video"
    head["template"]["spec"]["containers"][0]["resources"]["limits"]["example.com/fpga"] = 1
    assert schema_errors(cluster) == []


# ================================================================ tests: cron and time zones


@pytest.mark.parametrize(
    "schedule",
    ["30 1 * * *", "*/15 * * * *", "0 0-23/2 * * MON-FRI", "0 3 1,15 * *", "5 4 * jan,jul sun", "0 0 ? * 1/2",
     "59 23 31 12 6", "@daily"],
)  # fmt: skip
def test_cron_validator_accepts_standard_schedules(schedule):
    assert cron_problems(schedule) == []


@pytest.mark.parametrize(
    "schedule, problem",
    [
        ("30 1 * *", "4 fields"),
        ("30 1 * * * *", "6 fields"),
        ("60 1 * * *", "out of range 0-59"),
        ("0 24 * * *", "out of range 0-23"),
        ("0 0 0 * *", "out of range 1-31"),
        ("0 0 * 13 *", "out of range 1-12"),
        ("0 0 * * 7", "out of range 0-6"),
        ("*/0 * * * *", "positive"),
        ("5-1 * * * *", "backwards"),
        ("0 0 * * FOO", "not a number"),
        ("1,,2 * * * *", "empty"),
        ("? * * * *", "not a number"),
        ("TZ=Europe/Berlin 0 0 * * *", "timeZone"),
        ("", "non-empty"),
    ],
)
def test_cron_validator_rejects_bad_schedules(schedule, problem):
    problems = cron_problems(schedule)
    assert problems and any(problem in p for p in problems), problems


def test_every_schedule_and_time_zone_is_valid():
    cron, submit = the("RayCronJob"), the("CronJob")
    for where, spec in (("raycronjob.yaml", cron["spec"]), ("cronjob-submit.yaml", submit["spec"])):
        assert cron_problems(spec["schedule"]) == [], where
        assert time_zone_problems(spec.get("timeZone")) == [], where
    assert cron["spec"]["suspend"] is False
    # both ways of scheduling run at the same time
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == (
        submit["spec"]["schedule"],
        submit["spec"]["timeZone"],
    )


def test_time_zone_check_rejects_unknown_zones():
    assert time_zone_problems("Europe/Berlin") == []
    assert time_zone_problems("Europe/Berln")
    assert time_zone_problems("")
    assert time_zone_problems(None)


# ================================================================ tests: cross-field rules


def test_rayjob_and_cron_template_obey_kuberay_rules():
    assert rayjob_problems(the("RayJob")["spec"]) == []
    assert rayjob_problems(the("RayCronJob")["spec"]["jobTemplate"]) == []
    assert raycluster_problems(the("RayCluster")["spec"]) == []


def test_names_fit_kuberay_and_kubernetes_limits():
    for _, doc in manifests():
        assert name_problems(doc["kind"], doc["metadata"]["name"]) == [], doc["kind"]
    assert name_problems("RayCronJob", "a" * 37)  # its RayJobs get an 11-character suffix
    assert name_problems("RayJob", "Two_Styles")


def _worker(spec: dict) -> dict:
    return spec["rayClusterSpec"]["workerGroupSpecs"][0]


def _drop(d: dict, key: str) -> None:
    del d[key]


RAYJOB_MUTATIONS = {
    "both cluster and selector": (lambda s: s.update(clusterSelector={"ray.io/cluster": "x"}), "exactly one"),
    "neither cluster nor selector": (lambda s: _drop(s, "rayClusterSpec"), "exactly one"),
    "ttl without shutdown": (lambda s: s.update(shutdownAfterJobFinishes=False), "ttlSecondsAfterFinished"),
    "negative ttl": (lambda s: s.update(ttlSecondsAfterFinished=-1), ">= 0"),
    "no entrypoint in K8sJobMode": (lambda s: s.update(entrypoint="  "), "entrypoint"),
    "unknown submission mode": (lambda s: s.update(submissionMode="K8sMode"), "submissionMode"),
    "suspend without shutdown": (lambda s: s.update(suspend=True, shutdownAfterJobFinishes=False), "suspended"),
    "replicas above max": (lambda s: _worker(s).update(replicas=9), "replicas (9)"),
    "replicas below min": (lambda s: _worker(s).update(replicas=7), "replicas (7)"),
    "min above max": (lambda s: _worker(s).update(minReplicas=9), "minReplicas (9)"),
    "no maxReplicas": (lambda s: _drop(_worker(s), "maxReplicas"), "required"),
    "resources twice": (lambda s: _worker(s).update(rayStartParams={"num-gpus": "1"}, resources={"GPU": "1"}), "both"),
    "image differs": (
        lambda s: _worker(s)["template"]["spec"]["containers"][0].update(image="ghcr.io/example/anyv2v-batch:0.2.0"),
        "different images",
    ),
    "bad runtimeEnvYAML": (lambda s: s.update(runtimeEnvYAML="pip: [a"), "runtimeEnvYAML"),
    "zero deadline": (lambda s: s.update(activeDeadlineSeconds=0), "activeDeadlineSeconds"),
}


@pytest.mark.parametrize("mutation", RAYJOB_MUTATIONS, ids=list(RAYJOB_MUTATIONS))
@pytest.mark.parametrize("source", ["rayjob", "raycronjob"])
def test_rayjob_rules_catch_broken_specs(mutation, source):
    spec = the("RayJob")["spec"] if source == "rayjob" else the("RayCronJob")["spec"]["jobTemplate"]
    change, expected = RAYJOB_MUTATIONS[mutation]
    change(spec)
    problems = rayjob_problems(spec)
    assert any(expected in p for p in problems), problems


def test_clusters_follow_the_deployment_rules():
    clusters = [the("RayJob")["spec"]["rayClusterSpec"], the("RayCronJob")["spec"]["jobTemplate"]["rayClusterSpec"]]
    for cluster in [*clusters, the("RayCluster")["spec"]]:
        assert deployment_problems(cluster) == []


def _env(group: dict, name: str) -> dict:
    (entry,) = [e for e in containers(group)[0]["env"] if e["name"] == name]
    return entry


DEPLOYMENT_MUTATIONS = {
    "gpu on the head": (
        lambda c: c["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update({GPU: 1}),
        "head",
    ),
    "head advertises gpus": (lambda c: c["headGroupSpec"]["rayStartParams"].pop("num-gpus"), "head"),
    "pool not fixed": (lambda c: c["workerGroupSpecs"][0].update(minReplicas=1), "fixed"),
    "autoscaling": (lambda c: c.update(enableInTreeAutoscaling=True), "autoscaling"),
    "no gpu workers": (
        lambda c: c["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].pop(GPU),
        "no worker group",
    ),
    "hub online": (lambda c: _env(c["workerGroupSpecs"][0], "HF_HUB_OFFLINE").update(value="0"), "OFFLINE"),
    "no models volume": (lambda c: c["workerGroupSpecs"][0]["template"]["spec"]["volumes"].pop(0), "mount"),
    "literal secret": (
        lambda c: _env(c["headGroupSpec"], "AWS_SECRET_ACCESS_KEY").update(value="x", valueFrom=None),
        "from a secret",
    ),
}


@pytest.mark.parametrize("mutation", DEPLOYMENT_MUTATIONS, ids=list(DEPLOYMENT_MUTATIONS))
def test_deployment_rules_catch_broken_clusters(mutation):
    cluster = the("RayJob")["spec"]["rayClusterSpec"]
    change, expected = DEPLOYMENT_MUTATIONS[mutation]
    change(cluster)
    problems = deployment_problems(cluster)
    assert any(expected in p for p in problems), problems


# ================================================================ tests: the files agree with each other


def test_cron_template_and_standing_cluster_equal_the_rayjob():
    rayjob = the("RayJob")["spec"]
    assert the("RayCronJob")["spec"]["jobTemplate"] == rayjob
    assert the("RayCluster")["spec"] == rayjob["rayClusterSpec"]


def test_one_image_everywhere_with_a_fixed_tag():
    images: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                images.update(c["image"] for c in node["containers"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for _, doc in manifests():
        collect(doc)
    images.add(launcher_config()["docker"]["image"])
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert "/" in name and tag and tag != "latest" and "/" not in tag, image


def test_cronjob_submits_to_the_standing_clusters_head():
    command = submit_command()
    assert command[:3] == ["ray", "job", "submit"] and "--" in command
    address = urlsplit(command[command.index("--address") + 1])
    cluster = the("RayCluster")
    assert address.hostname == f"{cluster['metadata']['name']}-head-svc"  # KubeRay's head service name
    (head,) = containers(cluster["spec"]["headGroupSpec"])
    ports = {p.get("name"): p["containerPort"] for p in head["ports"]}
    assert address.port == ports["dashboard"] == 8265


def test_cronjob_forbids_overlap_and_prunes_history():
    spec = the("CronJob")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_weights_volume_is_the_one_the_pods_mount_and_holds_the_jobs_model():
    docs = {d["kind"]: d for d in load_docs(INFRA / "models.yaml")}
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == MODELS_CLAIM
    assert "ReadWriteMany" in docs["PersistentVolumeClaim"]["spec"]["accessModes"]  # pods on many nodes
    pod = docs["Job"]["spec"]["template"]["spec"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]} == {MODELS_CLAIM}
    (container,) = pod["containers"]
    assert env_of(container).get("HF_HOME") == HF_HOME and "HF_HUB_OFFLINE" not in env_of(container)
    command = container["command"]
    assert command[:2] == ["hf", "download"]
    from anyv2v_batch.backbones import backbone_class

    models = {(job := job_of(argv)).model or backbone_class(job.backbone).default_model for _, argv, _ in entrypoints()}
    assert models == {command[2]}


# ================================================================ tests: the jobs


def test_each_entrypoint_runs_a_valid_example_job_with_valid_overrides():
    runs = entrypoints()
    assert len(runs) == 3
    for where, argv, _ in runs:
        job = job_of(argv)
        assert job.variants, where
        assert re.match(r"^(s3|gs|gcs|abfs|az)://", job.output), f"{where}: a cluster needs shared output storage"
        overrides = parse_set([argv[i + 1] for i, word in enumerate(argv) if word == "--set"])
        for key, value in overrides.items():  # the overrides reach the job
            if key.startswith("pools."):
                _, pool, field = key.split(".")
                assert getattr(job.pool(pool), field) == value, (where, key)


def test_entrypoint_parses_with_the_real_command_line():
    import typer

    from anyv2v_batch.cli import app

    run = typer.main.get_command(app).commands["run"]
    for where, argv, _ in entrypoints():
        ctx = run.make_context("run", argv[2:])  # raises on an unknown flag
        assert ctx.params["job_file"] is not None, where


def test_job_loading_rejects_bad_overrides_and_missing_files():
    examples = "/opt/anyv2v-batch/pipelines/examples"
    with pytest.raises(JobError, match="sise"):
        job_of(["anyv2v-batch", "run", f"{examples}/two_styles.yaml", "--set", "pools.sampler.sise=2"])
    with pytest.raises(JobError, match="must be >= 1"):
        job_of(["anyv2v-batch", "run", f"{examples}/two_styles.yaml", "--set", "pools.sampler.size=0"])
    with pytest.raises(JobError, match="does not exist"):
        job_of(["anyv2v-batch", "run", f"{examples}/no_such_job.yaml"])
    with pytest.raises(AssertionError, match="not in the image"):
        image_path_to_repo("/srv/job.yaml")


def test_pools_fit_the_gpus_and_match_the_jobs_own_split():
    from anyv2v_batch.editors import editor_class
    from anyv2v_batch.pipelines.balance import split_gpus

    for where, argv, cluster in entrypoints():
        job, have = job_of(argv), cluster_gpus(cluster)
        editor = job.pool("editor")
        editor_gpus = (editor.size or 1) * (editor.num_gpus if editor.num_gpus is not None else 1)
        if not any(editor_class(v.editor.name).needs_gpu for v in job.variants):
            editor_gpus = 0
        sizes = {n: job.pool(n).size for n in ("inversion", "sampler")}
        if None in sizes.values():
            continue  # the job splits the GPUs itself
        need = editor_gpus + sum(sizes[n] * (job.pool(n).num_gpus or 1) for n in sizes)
        assert need <= have, f"{where}: the pools need {need} GPUs, the cluster has {have}"
        assert (sizes["inversion"], sizes["sampler"]) == split_gpus(job, int(have - editor_gpus)), where


# ================================================================ tests: core Kubernetes objects


def core_objects() -> list[tuple[str, dict]]:
    return [(name, d) for name, d in manifests() if not d["apiVersion"].startswith("ray.io/")]


def test_core_kubernetes_objects_match_their_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate to check core objects")
    objects = core_objects()
    assert {d["kind"] for _, d in objects} == {"CronJob", "PersistentVolumeClaim", "Job"}
    for name, doc in objects:
        try:
            kv.validate(doc, "1.30.0", strict=True)  # CronJob.timeZone is GA since 1.27
        except kv.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']}: {e}")
    broken = the("CronJob")
    broken["spec"]["concurrencypolicy"] = broken["spec"].pop("concurrencyPolicy")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.30.0", strict=True)


# ================================================================ tests: the cluster launcher


def load_json_lenient(text: str) -> dict:
    """JSON, after any leading comment lines or other prefix before the first `{`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text[text.index("{") :])


@functools.cache
def ray_launcher_schema() -> dict:
    import os

    import ray

    path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(path, encoding="utf-8") as f:
        return load_json_lenient(f.read())


def launcher_problems(config: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(ray_launcher_schema())
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(config)
    ]
    types = config.get("available_node_types") or {}
    if config.get("head_node_type") not in types:
        problems.append("head_node_type must be one of available_node_types")
    if sum(t.get("min_workers", 0) for t in types.values()) > config.get("max_workers", 2):
        problems.append("max_workers is below the sum of the node types' min_workers")
    for name, node_type in types.items():
        if name != config.get("head_node_type") and node_type.get("min_workers", 0) != node_type.get("max_workers"):
            problems.append(f"{name}: a fixed cluster needs min_workers = max_workers")
    return problems


def test_lenient_json_loader_skips_a_leading_comment():
    assert load_json_lenient('// generated\n{"a": 1}') == {"a": 1}
    assert load_json_lenient('{"a": 1}') == {"a": 1}


def test_cluster_launcher_config_matches_rays_schema():
    config = launcher_config()
    assert launcher_problems(config) == []
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # no work on the head
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t.get("min_workers", 0) > 0 for t in workers)
    assert config["max_workers"] == sum(t["max_workers"] for t in workers)


def test_cluster_launcher_check_catches_mistakes():
    config = launcher_config()
    config["setup_command"] = config.pop("setup_commands")
    assert any("setup_command" in p for p in launcher_problems(config))
    config = launcher_config()
    config["available_node_types"]["gpu_worker"]["min_workers"] = 2
    assert any("min_workers = max_workers" in p for p in launcher_problems(config))
    config = launcher_config()
    config["head_node_type"] = "ray.head.default"
    assert any("head_node_type" in p for p in launcher_problems(config))


# ================================================================ tests: the Dockerfile and the README


def test_dockerfile_copies_what_exists_and_installs_the_package():
    text = (INFRA / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    assert image_path_to_repo("/opt/anyv2v-batch/pipelines/examples/two_styles.yaml").is_file()


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("COPY operators/ operators/", "COPY operator/ operators/", "'operator/' is not in the repository"),
        ("pip install --no-cache-dir '.'", "pip install --no-cache-dir anyv2v-batch", "package itself"),
        ("'ray[default]>=2.50,<3'", "'ray[default]>=2.40'", "version range"),
        (" s3fs ", " ", "s3fs"),
        ("wget ", "curl ", "wget"),
        ("FROM python:3.11-slim-bookworm", "FROM python:3.12-slim", "python:3.11"),
    ],
)
def test_dockerfile_check_catches_mistakes(old, new, problem):
    text = (INFRA / "Dockerfile").read_text()
    assert old in text, f"the test's anchor {old!r} is gone from the Dockerfile: update the test"
    problems = dockerfile_problems(text.replace(old, new))
    assert any(problem in p for p in problems), problems


def test_dockerignore_keeps_every_copied_source():
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src, _, _ in dockerfile_copies((INFRA / "Dockerfile").read_text()):
        assert src.rstrip("/") in kept, f"{src} is copied but excluded from the build context"


def test_readme_covers_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in sorted(INFRA.iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, f"infra/README.md does not describe {path.name}"
