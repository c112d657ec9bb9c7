"""Images for the process kubelet: what a container image would run, read from its Dockerfile.

An :class:`Image` is a Dockerfile's runtime configuration (ENTRYPOINT, CMD, ENV, WORKDIR,
USER, EXPOSE of the stage that runs; parsed, never restated) plus ``mounts``: where the
image's directories are on this host (``/opt/shoal`` -> a virtualenv laid out like the
image's, ``/app`` -> a directory of user modules). Everything here is pure; the kubelet
(kubelet.py) turns a pod's container into a command line, an environment and a working
directory with these functions.

Ports: every pod runs on this one host, so two pods cannot both listen on 9090. The kubelet
gives each pod its own free host port for every named ``containerPort`` and tells the
process through the image's ``port_flags`` (for the shoal image: the port named ``metrics``
is the ``--metrics-port`` flag, ``health`` is ``--health-port``): the flag's value in the
command line is replaced when it names the containerPort, and the flag is appended when the
command line does not give it (the operator's defaults, 8080 and 9090). Probes and scrapes
of that containerPort go to the pod's host port (``Kubelet.port()``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The PATH of a Debian-based image (python:*-slim) before the Dockerfile changes it.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHOAL_PORT_FLAGS = {"metrics": "--metrics-port", "health": "--health-port"}


@dataclass(frozen=True)
class ImageConfig:
    """The runtime configuration a Dockerfile stage gives its image (``docker inspect``'s Config)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    exposed: tuple[str, ...] = ()
    copies: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # (--from stage or "", sources, destination)


@dataclass(frozen=True)
class Image:
    """An image the kubelet can "pull": its configuration and where its directories are here."""

    config: ImageConfig
    mounts: Mapping[str, Path] = field(default_factory=dict)
    port_flags: Mapping[str, str] = field(default_factory=dict)

    def with_layer(self, path: str, host_dir: Path) -> Image:
        """This image plus one more directory (like ``FROM shoal`` + ``COPY tasks/ /app/``)."""
        return Image(self.config, {**self.mounts, path: host_dir}, self.port_flags)


def _logical_lines(text: str) -> list[str]:
    """Instructions one per line: continuations joined, comments and blank lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue  # comments (also inside continuations) and blank continuation lines
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def expand_docker(text: str, env: Mapping[str, str]) -> str:
    """Dockerfile variable substitution: $VAR, ${VAR}, ${VAR:-default}."""
    def sub(m: re.Match[str]) -> str:
        value = env.get(m[1] or m[3], "")
        return m[2] if m[2] is not None and not value else value

    return _VAR.sub(sub, text)


def _exec_form(rest: str) -> tuple[str, ...]:
    """An exec-form (JSON array) instruction, or the shell form wrapped in /bin/sh -c."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    return ("/bin/sh", "-c", rest)


_ENV_PAIR = re.compile(r"""([^\s=]+)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)""")


def _env_pairs(rest: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """ENV's ``NAME=value ...`` (quotes group words; single quotes do not expand) or the
    legacy ``NAME value``; values expand with the variables from before this instruction."""
    if "=" not in rest.split(None, 1)[0]:
        name, _, value = rest.partition(" ")
        return [(name, expand_docker(value.strip(), env))]
    pairs: list[tuple[str, str]] = []
    for m in _ENV_PAIR.finditer(rest):
        name, value = m[1], m[2]
        if value.startswith("'"):
            value = value[1:-1]
        elif value.startswith('"'):
            value = expand_docker(re.sub(r"\\(.)", r"\1", value[1:-1]), env)
        else:
            value = expand_docker(value, env)
        pairs.append((name, value))
    return pairs


def parse_dockerfile(text: str, stage: str | None = None, base_env: Mapping[str, str] | None = None) -> ImageConfig:
    """The configuration of ``stage`` (default: the last one, the image ``docker build`` makes).

    A stage built ``FROM`` an earlier stage inherits its configuration; one built from an
    outside image starts from ``base_env`` (default: just a Debian PATH). Docker's rule holds:
    an ENTRYPOINT resets a CMD inherited from the base.
    """
    base = dict(base_env if base_env is not None else {"PATH": BASE_PATH})
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in _logical_lines(text):
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG":
            name, _, default = rest.partition("=")
            if current is None:
                args[name.strip()] = default.strip().strip('"')
            continue
        if instr == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            if m is None:
                raise ValueError(f"cannot parse: {line}")
            parent = expand_docker(m[1], args)
            if parent in stages:
                current = {**stages[parent], "env": dict(stages[parent]["env"]), "cmd_here": False}
            else:
                current = {"entrypoint": (), "cmd": (), "env": dict(base), "workdir": "/", "user": "",
                           "exposed": (), "cmd_here": False}
            current["copies"] = ()
            stages[m[2] or f"#{len(stages)}"] = current
            stages["#last"] = current
            continue
        if current is None:
            raise ValueError(f"{instr} before the first FROM")
        if instr == "ENV":
            for name, value in _env_pairs(rest, current["env"]):
                current["env"][name] = value
        elif instr == "ENTRYPOINT":
            current["entrypoint"] = _exec_form(rest)
            if not current["cmd_here"]:
                current["cmd"] = ()
        elif instr == "CMD":
            current["cmd"], current["cmd_here"] = _exec_form(rest), True
        elif instr == "WORKDIR":
            path = expand_docker(rest, current["env"])
            current["workdir"] = path if path.startswith("/") else f"{current['workdir'].rstrip('/')}/{path}"
        elif instr == "USER":
            current["user"] = expand_docker(rest, current["env"])
        elif instr == "EXPOSE":
            current["exposed"] = (*current["exposed"], *rest.split())
        elif instr in ("COPY", "ADD"):
            words = rest.split()
            source = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), "")
            paths = [w for w in words if not w.startswith("--")]
            dest = expand_docker(paths[-1], current["env"])
            dest = dest if dest.startswith("/") else f"{current['workdir'].rstrip('/')}/{dest}"
            current["copies"] = (*current["copies"], (source, tuple(paths[:-1]), dest))
    chosen = stages.get(stage or "#last")
    if chosen is None:
        raise ValueError(f"no stage {stage!r} in the Dockerfile")
    return ImageConfig(entrypoint=chosen["entrypoint"], cmd=chosen["cmd"], env=tuple(chosen["env"].items()),
                       workdir=chosen["workdir"], user=chosen["user"], exposed=chosen["exposed"],
                       copies=chosen["copies"])


_K8S_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_k8s(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: ``$$`` escapes, and an
    undefined reference is left as written."""
    return _K8S_REF.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def command_line(config: ImageConfig, container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """What the container runs (the Kubernetes rules): ``command`` replaces the ENTRYPOINT,
    ``args`` replace the CMD, and a ``command`` without ``args`` drops the CMD too.
    $(VAR) references in command and args are expanded from the container's env."""
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = [*command, *(args or [])]
        return [expand_k8s(a, env) for a in argv]
    tail = [expand_k8s(a, env) for a in args] if args else list(config.cmd)
    return [*config.entrypoint, *tail]


def map_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite the image paths in ``text`` (a value, an argument, a PATH list) to their host
    directories. Only whole path prefixes at a word start are rewritten: ``/tmp/x`` and
    ``a:/tmp`` are, ``host/tmp`` and ``/tmpfoo`` are not."""
    if not mounts:
        return text
    targets = {prefix.rstrip("/") or "/": str(host) for prefix, host in mounts.items()}
    alternatives = "|".join(re.escape(p) for p in sorted(targets, key=len, reverse=True))
    pattern = re.compile(r"(?:^|(?<=[:=\s,]))(" + alternatives + r")(?=/|:|,|\s|$)")
    return pattern.sub(lambda m: targets[m[1]], text)  # one pass: a host path is never mapped again


def rewrite_ports(argv: Sequence[str], ports: Mapping[str, tuple[int, int]],
                  port_flags: Mapping[str, str]) -> list[str]:
    """Point the process at its pod's host ports: ``ports`` maps a port name to
    (containerPort, hostPort); ``port_flags`` maps a port name to the flag that sets it.
    A flag naming the containerPort gets the host port; a missing flag is appended."""
    out = list(argv)
    for name, (container_port, host_port) in ports.items():
        flag = port_flags.get(name)
        if flag is None:
            continue
        found = False
        for i, word in enumerate(out):
            if word == flag and i + 1 < len(out):
                found = True
                if out[i + 1] == str(container_port):
                    out[i + 1] = str(host_port)
            elif word.startswith(flag + "="):
                found = True
                if word == f"{flag}={container_port}":
                    out[i] = f"{flag}={host_port}"
        if not found:
            out.append(f"{flag}={host_port}")
    return out
