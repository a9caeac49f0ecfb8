"""Write the compose secrets under ops/compose/secrets/ once (random values).

Run by `make compose-secrets`. Existing files are kept, so a second run
changes nothing; delete the folder to start a new cluster with new secrets.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path


def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    user = "protobase"
    password = secrets.token_hex(20)
    values = {
        "cluster.secret": secrets.token_hex(32),
        "client.token": secrets.token_hex(32),
        "minio_root_user": user,
        "minio_root_password": password,
        "s3_credentials": (
            f"[default]\naws_access_key_id = {user}\naws_secret_access_key = {password}"
        ),
    }
    if (directory / "minio_root_password").exists():
        return  # written before: the S3 credentials must keep matching MinIO's
    for name, value in values.items():
        path = directory / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    print(f"wrote {len(values)} secrets in {directory}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "secrets")
