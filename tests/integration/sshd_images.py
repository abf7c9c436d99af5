"""Build the images of the end-to-end tests: an OpenSSH server, an SSH client, nginx.

Their Dockerfiles live in `images/`; apt runs inside the build with the
host's network, so the air-gapped base (PYFILTER_AIRGAPPED=1) works with no
registry. Each tag carries a hash of its build folder and base image, so a
rerun with unchanged files reuses the image and an edit builds a new one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker

from tests.integration import stack

IMAGES = Path(__file__).with_name("images")
NAMES = ("sshd", "client")


def base_image() -> str:
    """The air-gapped Debian base the stack's images use, else Debian from a registry."""
    return stack.BASE_IMAGE if stack.AIRGAPPED else "debian:bookworm-slim"


def context_hash(folder: Path, base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build(client: docker.DockerClient, name: str) -> str:
    """Tag of the test image `name`, built first if that tag is missing."""
    base = base_image()
    folder = IMAGES / name
    tag = f"pyfilter-test-{name}:{context_hash(folder, base)}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    if stack.AIRGAPPED:
        try:
            client.images.get(base)
        except docker.errors.ImageNotFound:
            raise RuntimeError(f"{base} is missing: build it with `make images AIRGAPPED=1`") from None
    try:
        client.images.build(path=str(folder), buildargs={"BASE_IMAGE": base},
                            network_mode="host", tag=tag, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        log = "".join(chunk.get("stream", "") for chunk in exc.build_log)
        raise RuntimeError(f"building {tag} from {folder} failed: {exc}\n{log[-3000:]}") from exc
    return tag


def build_all() -> dict[str, str]:
    """Tags of every test image, by name ("sshd", "client")."""
    client = docker.from_env()
    return {name: build(client, name) for name in NAMES}


if __name__ == "__main__":
    for name, tag in build_all().items():
        print(name, tag)
