"""S3-compatible store: versitygw (Apache-2.0, POSIX backend) built from the Go module proxy; the archive bucket."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request

from devstack import versions
from devstack.config import DATA, DOWNLOADS, PORTS, ensure_env_file, load_env_file
from devstack.process import StackError, log, port_open, run, spawn
from devstack.services import Service


S3_BIN = DOWNLOADS / "bin" / "versitygw"


def s3_install() -> None:
    if S3_BIN.exists():
        return
    if not shutil.which("go"):
        raise StackError("s3: the Go toolchain is needed to build versitygw from the Go module proxy")
    S3_BIN.parent.mkdir(parents=True, exist_ok=True)
    log(f"building versitygw {versions.VERSITYGW} from the Go module proxy (first run only)")
    run(["go", "install", f"github.com/versity/versitygw/cmd/versitygw@{versions.VERSITYGW}"], "s3",
        env={**os.environ, "GOBIN": str(S3_BIN.parent), "CGO_ENABLED": "0"})


def s3_start() -> subprocess.Popen:
    env = ensure_env_file()
    root = DATA / "s3"
    root.mkdir(parents=True, exist_ok=True)
    return spawn("s3", [S3_BIN, "--port", f"127.0.0.1:{PORTS['s3']}", "posix", root],
                 env={"ROOT_ACCESS_KEY": env["SPACES_ACCESS_KEY"], "ROOT_SECRET_KEY": env["SPACES_SECRET_KEY"]})


def s3_healthy() -> bool:
    if not port_open(PORTS["s3"]):
        return False
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORTS['s3']}/", timeout=2)
    except urllib.error.HTTPError:
        return True  # 403 to an unsigned request: the server answers
    return True


def s3_after_start() -> None:
    import boto3  # in the project venv

    env = load_env_file()
    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], region_name=env["SPACES_REGION"],
                      aws_access_key_id=env["SPACES_ACCESS_KEY"], aws_secret_access_key=env["SPACES_SECRET_KEY"])
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if env["SPACES_BUCKET"] not in names:
        s3.create_bucket(Bucket=env["SPACES_BUCKET"])


SERVICE = Service("s3", PORTS["s3"], s3_install, s3_start, s3_healthy, 30, s3_after_start,
                  f"http://localhost:{PORTS['s3']} (S3 API, versitygw)")
