"""Registry-free images: recipe hashing, build order, idempotent builds, and what each image really holds."""

from __future__ import annotations

import dataclasses

import docker
import pytest

from cycleqd.sandboxes import images
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.errors import ImageMissingError
from cycleqd.sandboxes.images import (
    RECIPES,
    BuildSettings,
    build_images,
    build_order,
    dockerfile_for,
    image_tag,
    recipe_hash,
)
from tests.sandbox_settings import TEST_LIMITS


def test_hash_is_stable_and_follows_the_recipe_and_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {name: recipe_hash(name) for name in RECIPES}
    assert before == {name: recipe_hash(name) for name in RECIPES}
    base = RECIPES["os-default"]
    monkeypatch.setitem(RECIPES, "os-default", dataclasses.replace(base, packages=(*base.packages, "jq")))
    assert recipe_hash("os-default") != before["os-default"]
    assert recipe_hash("mariadb") != before["mariadb"]  # a child follows its parent


def test_mirror_does_not_change_the_tag_but_the_base_source_does() -> None:
    assert image_tag("os-default", BuildSettings(mirror="http://mirror.example/debian")) == image_tag("os-default")
    assert image_tag("os-default", BuildSettings(base_from="debian:bookworm")) != image_tag("os-default")


def test_build_order_puts_parents_first_and_rejects_unknown_names() -> None:
    assert build_order(["mariadb"]) == ["os-default", "mariadb"]
    assert build_order(["mariadb", "os-packages", "os-default"]) == ["os-default", "mariadb", "os-packages"]
    with pytest.raises(ImageMissingError, match="unknown sandbox image 'nope'"):
        build_order(["nope"])


def test_dockerfiles_build_on_the_exact_parent_tag() -> None:
    dockerfile = dockerfile_for("mariadb", BuildSettings())
    assert dockerfile.startswith(f"FROM {image_tag('os-default')}\n")
    assert "mariadb-server" in dockerfile and recipe_hash("mariadb") in dockerfile


def test_second_build_is_a_no_op(docker_engine: docker.DockerClient, os_image: str) -> None:
    image_id = docker_engine.images.get(os_image).id
    [outcome] = build_images(docker_engine, ["os-default"])
    assert (outcome.built, outcome.tag) == (False, os_image)
    assert docker_engine.images.get(os_image).id == image_id
    assert docker_engine.images.get(os_image).labels[images.RECIPE_LABEL] == recipe_hash("os-default")


PROMISED = {
    "os-default": "for tool in bash python3 pip3 git vim curl wget unzip zip tree ps file find; do "
    "command -v $tool >/dev/null || echo missing $tool; done",
    "os-packages": "node -e 'console.log(6*7)'; command -v npm >/dev/null || echo missing npm",
    "mariadb": "command -v mariadbd >/dev/null && command -v mariadb >/dev/null || echo missing mariadb",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
async def test_every_image_holds_what_its_recipe_promises(docker_engine: docker.DockerClient, name: str) -> None:
    build_images(docker_engine, [name])
    async with await DockerSandbox.start(image_tag(name), limits=TEST_LIMITS) as box:
        result = await box.exec(PROMISED[name])
    assert "missing" not in result.stdout and result.exit_code == 0, result
    if name == "os-packages":
        assert result.stdout.strip() == "42"
