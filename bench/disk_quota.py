"""What the sandbox disk limit costs at start-up: two engines side by side in one run (interleaved rounds).

    python -m bench.disk_quota --base unix:///var/run/docker.sock --quota unix:///PATH/docker.sock [--rounds N]

`--base` is an engine that cannot limit a sandbox's writes (overlay2 on ext4, dockerd's default here); `--quota` one
that can (the btrfs data root with quotas on that `cycleqd engine start` sets up). Both need the image. For each:
seconds per sandbox lifecycle through our DockerSandbox (create with the default limits, so with `--storage-opt
size` where the engine can enforce it; start; one exec; remove) at concurrency 1 and 8. Prints quota ÷ base.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import docker

from bench.oci_runtime import lifecycles
from cycleqd.sandboxes.limits import quota_supported


async def main(base: str, quota: str, image: str, rounds: int) -> None:
    clients = {"base": docker.DockerClient(base_url=base), "quota": docker.DockerClient(base_url=quota)}
    for name, client in clients.items():
        info = client.info()
        print(f"{name:<5} {client.api.base_url}: storage {info['Driver']}, disk limit enforced: "
              f"{quota_supported(info)}")  # fmt: skip
    for concurrency in (1, 8):
        samples: dict[str, list[float]] = {name: [] for name in clients}
        for client in clients.values():
            await lifecycles(client, image, None, concurrency)  # warm-up
        for _ in range(rounds):
            for name, client in clients.items():
                samples[name].append(await lifecycles(client, image, None, concurrency))
        base_s, quota_s = (statistics.median(samples[name]) for name in clients)
        print(f"lifecycle, concurrency {concurrency}: base {base_s * 1000:7.1f} ms  quota {quota_s * 1000:7.1f} ms "
              f"-> quota/base {quota_s / base_s:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="An engine without disk limits.")
    parser.add_argument("--quota", required=True, help="An engine with them.")
    parser.add_argument("--image", default="cycleqd/os-default:latest")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.base, args.quota, args.image, args.rounds))
