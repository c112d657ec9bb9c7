"""The images' installed size with and without the operator stack (issue 16: a lean install).

    PYTHONSAFEPATH=1 .venv/bin/python bench/image_size.py

The Dockerfile's two targets differ only in their venv at /opt/shoal: `worker` installs
`shoal` (asyncpg, prometheus-client, croniter), `operator` installs `shoal[operator,console]`
(plus kopf, the kubernetes client, aiohttp). Their dependencies are weighed from this
environment's installed files (the same versions pip would put in the image, bytecode included;
what the venv tooling itself and shoal's own files add is the same for both and left out).
"""

from __future__ import annotations

from shoal.testing.closure import installed_bytes, runtime_closure

TARGETS = {"worker": (), "operator": ("operator", "console")}
MB = 1024 * 1024


def main() -> None:
    sizes: dict[str, dict[str, int]] = {}
    for target, extras in TARGETS.items():
        sizes[target] = {d.metadata["Name"]: installed_bytes(d) for d in runtime_closure(extras=extras)}
    worker, operator = (sum(s.values()) for s in sizes.values())
    print(f"{'target':<10} {'distributions':>13} {'installed':>10}")
    for target, dists in sizes.items():
        print(f"{target:<10} {len(dists):>13} {sum(dists.values()) / MB:>8.1f} MB")
    print(f"\nthe worker image's dependencies are {worker / operator:.0%} of the operator image's "
          f"({(operator - worker) / MB:.1f} MB less)")
    extra = {n: b for n, b in sizes["operator"].items() if n not in sizes["worker"]}
    print("largest of what only the operator image has: " + ", ".join(
        f"{n} {b / MB:.1f} MB" for n, b in sorted(extra.items(), key=lambda kv: -kv[1])[:5]))


if __name__ == "__main__":
    main()
