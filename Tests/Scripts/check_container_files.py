#!/usr/bin/env python3
"""Syntax-checks the container recipe's Dockerfile and Kubernetes Pod manifest, which no container
runtime here can build or apply: the YAML parses and names what the page says; every Dockerfile
instruction is a known one, and the commands it runs exist in this package."""
import re
import sys

import yaml

directory = sys.argv[1]
problems = []

pod = yaml.safe_load(open(f"{directory}/pod.yaml"))
spec = pod.get("spec", {})
containers = {c["name"]: c for c in spec.get("containers", [])}
if pod.get("apiVersion") != "v1" or pod.get("kind") != "Pod":
    problems.append("pod.yaml: not a v1 Pod")
if spec.get("shareProcessNamespace") is not False:
    problems.append("pod.yaml: shareProcessNamespace must be false (the point of the recipe)")
if set(containers) != {"sidecar", "app"}:
    problems.append(f"pod.yaml: containers {sorted(containers)}, expected sidecar and app")
volumes = {v["name"]: v for v in spec.get("volumes", [])}
if "emptyDir" not in volumes.get("shared", {}):
    problems.append("pod.yaml: no emptyDir volume named shared")
for name, container in containers.items():
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    if mounts.get("shared") != "/run/shared":
        problems.append(f"pod.yaml: {name} does not mount the shared volume at /run/shared")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    if env.get("SOCKSHARE_BROKER") != "/run/shared/sockshare/broker.sock":
        problems.append(f"pod.yaml: {name} does not name the broker's socket on the volume")
script = " ".join(containers.get("sidecar", {}).get("args", []))
for needed in ("sockshare broker", "--group 1000", "sockshare bind tcp://0.0.0.0:8080", "--name web", "--keep",
               "--for-uid 1000", "sockshare serve --mode handoff --workers 0", "--worker-socket /run/shared/serve/workers.sock",
               "--worker-uid 1000 --worker-gid 1000"):
    if needed not in " ".join(script.split()):
        problems.append(f"pod.yaml: the sidecar does not run {needed!r}")
app = containers.get("app", {})
app_env = {e["name"]: e["value"] for e in app.get("env", [])}
if app.get("command") != ["hello-worker"] or app_env.get("SOCKSHARE_WORKER_SOCKET") != "/run/shared/serve/workers.sock":
    problems.append("pod.yaml: the app does not connect to the sidecar's worker socket")
if app.get("securityContext", {}).get("runAsUser") != 1000:
    problems.append("pod.yaml: the app does not run as uid 1000")

known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "VOLUME", "ENTRYPOINT", "CMD", "ARG", "USER", "EXPOSE", "LABEL"}
lines = open(f"{directory}/Dockerfile").read().split("\n")
continued = False
stages = 0
for number, line in enumerate(lines, 1):
    stripped = line.strip()
    if not continued and stripped and not stripped.startswith("#"):
        word = stripped.split()[0]
        if word not in known:
            problems.append(f"Dockerfile:{number}: unknown instruction {word}")
        stages += word == "FROM"
    continued = stripped.endswith("\\")
if stages != 2:
    problems.append(f"Dockerfile: {stages} stages, expected a build stage and a runtime stage")
for product in re.findall(r"--product (\S+)", open(f"{directory}/Dockerfile").read()):
    if f'name: "{product}"' not in open(f"{directory}/../../Package.swift").read():
        problems.append(f"Dockerfile: no product {product} in Package.swift")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print("container files: ok")
