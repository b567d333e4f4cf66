"""Sandbox images built without a registry, tagged by a hash of their recipe so that a rebuild is a no-op.

The base is a Debian root filesystem made by `debootstrap --variant=minbase` and brought in with `docker
import`; the other images are small Dockerfiles `FROM` it that install Debian packages (built with the host's
network, since containers here have none). Where a registry is reachable, `base_from` starts from a pulled image
instead of debootstrap. A recipe's hash covers everything that shapes the image, including its parent's hash,
so changing the base rebuilds everything above it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.errors

from cycleqd.sandboxes.errors import ImageBuildError, ImageMissingError

BUILDER_VERSION = 1  # bump when the build procedure changes in a way the recipes do not show
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REPOSITORY = "cycleqd"
RECIPE_LABEL = "org.cycleqd.recipe"
IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    packages: tuple[str, ...]
    parent: str | None  # None: the debootstrap (or pulled) base
    summary: str


RECIPES: dict[str, ImageRecipe] = {
    recipe.name: recipe
    for recipe in (
        ImageRecipe(
            "os-default",
            (
                "bash",
                "coreutils",
                "python3",
                "python3-pip",
                "git",
                "vim",
                "curl",
                "wget",
                "unzip",
                "zip",
                "tree",
                "procps",
                "file",
                "findutils",
                "ca-certificates",
                "less",
                "sudo",
            ),
            None,
            "AgentBench's default OS image: a shell with the usual tools and python3",
        ),
        ImageRecipe("os-packages", ("npm",), "os-default", "os-default plus node and npm"),
        ImageRecipe("mariadb", ("mariadb-server", "mariadb-client"), "os-default", "MariaDB server for the DB tasks"),
    )
}


def default_cache_dir() -> Path:
    """$CYCLEQD_CACHE, else the XDG cache (the same rule as serving.default_model.cache_root)."""
    if os.environ.get("CYCLEQD_CACHE"):
        return Path(os.environ["CYCLEQD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cycleqd"


@dataclass(frozen=True)
class BuildSettings:
    mirror: str = DEFAULT_MIRROR
    base_from: str | None = None  # e.g. "debian:bookworm" where a registry is reachable
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())


@dataclass(frozen=True)
class BuildOutcome:
    name: str
    tag: str
    built: bool  # False: it was already there
    seconds: float


def recipe_hash(name: str, settings: BuildSettings | None = None) -> str:
    settings = settings or BuildSettings()
    recipe = RECIPES[name]
    spec = {
        "recipe": asdict(recipe),
        "parent": recipe_hash(recipe.parent, settings) if recipe.parent else None,
        "suite": DEBIAN_SUITE,
        "base_from": settings.base_from if recipe.parent is None else None,
        "env": IMAGE_ENV,
        "builder": BUILDER_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def image_tag(name: str, settings: BuildSettings | None = None) -> str:
    """The exact tag of the image `name` as its current recipe builds it."""
    if name not in RECIPES:
        raise ImageMissingError(f"unknown sandbox image {name!r}; known: {', '.join(RECIPES)}")
    return f"{REPOSITORY}/{name}:{recipe_hash(name, settings)[:12]}"


def image_present(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_order(names: Iterable[str]) -> list[str]:
    """`names` and their ancestors, parents first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in RECIPES:
            raise ImageMissingError(f"unknown sandbox image {name!r}; known: {', '.join(RECIPES)}")
        parent = RECIPES[name].parent
        if parent:
            visit(parent)
        if name not in order:
            order.append(name)

    for name in names:
        visit(name)
    return order


def build_images(
    client: docker.DockerClient,
    names: Iterable[str] | None = None,
    settings: BuildSettings | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[BuildOutcome]:
    """Build the images `names` (default: all) that are not there yet. Safe to call from several processes."""
    settings = settings or BuildSettings()
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    wanted = build_order(names or RECIPES)
    if all(image_present(client, image_tag(n, settings)) for n in wanted):
        return [BuildOutcome(n, image_tag(n, settings), False, 0.0) for n in wanted]
    with open(settings.cache_dir / "images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in wanted:
            tag = image_tag(name, settings)
            started = time.monotonic()
            if image_present(client, tag):
                outcomes.append(BuildOutcome(name, tag, False, 0.0))
                continue
            progress(f"building {tag} ({RECIPES[name].summary})")
            if RECIPES[name].parent is None and settings.base_from is None:
                _build_base_debootstrap(client, name, tag, settings)
            else:
                _build_from_dockerfile(client, name, tag, settings)
            client.images.get(tag).tag(f"{REPOSITORY}/{name}", "latest")
            outcomes.append(BuildOutcome(name, tag, True, time.monotonic() - started))
            progress(f"built {tag} in {outcomes[-1].seconds:.0f} s")
    return outcomes


def _build_base_debootstrap(client: docker.DockerClient, name: str, tag: str, settings: BuildSettings) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the base image with debootstrap needs root. Run `cycleqd images build` as root, or give "
            "--base-from IMAGE where a registry is reachable."
        )
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed: `apt-get install debootstrap` (or `cycleqd engine start`)")
    recipe = RECIPES[name]
    workdir = Path(tempfile.mkdtemp(prefix="rootfs-", dir=settings.cache_dir))
    log_path = settings.cache_dir / f"build-{name}.log"
    try:
        rootfs = workdir / "rootfs"
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.packages)}",
            DEBIAN_SUITE,
            str(rootfs),
            settings.mirror,
        ]
        _run_logged(argv, log_path)
        # Package lists and caches are dead weight in every sandbox.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tarball = workdir / "rootfs.tar"
        _run_logged(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], log_path)
        changes = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()]
        changes += ['CMD ["bash"]', f"LABEL {RECIPE_LABEL}={recipe_hash(name, settings)}"]
        repository, version = tag.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=version, changes=changes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not image_present(client, tag):
        raise ImageBuildError(f"docker import did not produce {tag}; see {log_path}")


def dockerfile_for(name: str, settings: BuildSettings) -> str:
    recipe = RECIPES[name]
    parent = image_tag(recipe.parent, settings) if recipe.parent else settings.base_from
    env = "".join(f"ENV {k}={v}\n" for k, v in IMAGE_ENV.items())
    return (
        f"FROM {parent}\n{env}"
        "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        f"--no-install-recommends {' '.join(recipe.packages)} >/dev/null && rm -rf /var/lib/apt/lists/*\n"
        f"LABEL {RECIPE_LABEL}={recipe_hash(name, settings)}\n"
    )


def _build_from_dockerfile(client: docker.DockerClient, name: str, tag: str, settings: BuildSettings) -> None:
    dockerfile = dockerfile_for(name, settings)
    log_path = settings.cache_dir / f"build-{name}.log"
    try:
        # Host network: our engine runs without iptables, so only the host's stack reaches the mirror.
        _image, logs = client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=tag,
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=settings.base_from is not None and RECIPES[name].parent is None,
        )
        log_path.write_text("".join(entry.get("stream", "") for entry in logs))
    except docker.errors.BuildError as exc:
        text = "".join(str(entry.get("stream", entry.get("error", ""))) for entry in exc.build_log)
        log_path.write_text(text)
        raise ImageBuildError(f"building {tag} failed: {exc.msg}\n{text[-2000:]}") from exc


def _run_logged(argv: list[str], log_path: Path) -> None:
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise ImageBuildError(f"`{argv[0]}` failed (exit {done.returncode}); log {log_path}:\n{tail}")
