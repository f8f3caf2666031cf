"""Local authentication, for development and tests: the keys `lifecycle up
--auth` runs the suite with and `lifecycle token` signs with, kept in the data
folder (`auth/`, private keys readable by their owner only).

- `people.jwk`: signs the tokens `lifecycle token` mints for people and clients;
- `service-<name>.jwk`: each service's own key, for its calls to the others
  (where no client certificate carries its identity);
- `jwks.json`: the public keys of all of them, which every service trusts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from runtime.auth import AuthConfig, mint
from runtime.config import SERVICE_NAMES, service_env_name
from runtime.identity import SERVICE_PREFIX

ISSUER = "lifecycle-local"
AUDIENCE = "lifecycle-ops"
PEOPLE = "people"


@dataclass(frozen=True)
class LocalAuth:
    folder: Path

    @property
    def jwks_file(self) -> Path:
        return self.folder / "jwks.json"

    def key_file(self, name: str) -> Path:
        return self.folder / f"{name}.jwk"

    def environment(self) -> dict[str, str]:
        """What the services need to check tokens and sign their own."""
        env = {
            "LIFECYCLE_AUTH_JWKS_FILE": str(self.jwks_file),
            "LIFECYCLE_AUTH_ISSUER": ISSUER,
            "LIFECYCLE_AUTH_AUDIENCE": AUDIENCE,
        }
        for service in SERVICE_NAMES:
            name = service_env_name(service, "AUTH_KEY_FILE")
            env[name] = str(self.key_file(f"service-{service}"))
        return env

    def token(self, subject: str, permissions: list[str], seconds: float) -> str:
        """A token for a person or client, signed with the people's key."""
        key = jwt.PyJWK.from_dict(json.loads(self.key_file(PEOPLE).read_text()))
        config = AuthConfig(issuer=ISSUER, audience=AUDIENCE)
        return mint(key, subject, config, seconds, kid=PEOPLE, permissions=permissions)


def local_auth(data_dir: Path) -> LocalAuth:
    """The local keys under `data_dir`, made the first time."""
    auth = LocalAuth(data_dir / "auth")
    if auth.jwks_file.exists():
        return auth
    auth.folder.mkdir(parents=True, exist_ok=True)
    kids = [PEOPLE, *(f"{SERVICE_PREFIX}{service}" for service in SERVICE_NAMES)]
    public = []
    for kid in kids:
        private = ec.generate_private_key(ec.SECP256R1())
        file = auth.key_file(
            kid if kid == PEOPLE else f"service-{kid.removeprefix(SERVICE_PREFIX)}"
        )
        _write_private(file, _jwk(private, kid))
        public.append(_jwk(private.public_key(), kid))
    auth.jwks_file.write_text(json.dumps({"keys": public}, indent=2))
    return auth


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def _write_private(path: Path, jwk: dict[str, Any]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(jwk, file)
