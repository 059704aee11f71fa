"""Keyed hashes of the identifiers a call carries (RECOMMENDATIONS-v2 B-0.7), and the
service secret they are keyed with. No identifier is stored or logged in clear: the
issued-card records hold HMAC-SHA256(secret, ...) only, so a copy of the database does
not name a patient without the secret.

The secret is the setting service_secret (MM_CDS_SERVICE_SECRET), at least 16 characters.
The production server does not start without it; the development server makes one,
per data_dir, in the file `service-secret` (mode 0600) and says so in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cds_service.config import Settings
from cds_service.errors import ConfigurationError

log = logging.getLogger(__name__)
SECRET_FILE = "service-secret"
MIN_SECRET = 16


class Keys:
    def __init__(self, secret: bytes):
        self._secret = secret

    def _key(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def patient(self, fhir_server: str | None, patient_id: str) -> str:
        return self._key(f"{fhir_server or ''}|{patient_id}")

    def user(self, user_id: str) -> str:
        return self._key(f"user|{user_id}")

    def encounter(self, fhir_server: str | None, encounter_id: str | None) -> str | None:
        return self._key(f"encounter|{fhir_server or ''}|{encounter_id}") if encounter_id else None

    def order(self, reference: str) -> str:
        return self._key(f"order|{reference}")


def service_secret(settings: Settings, production: bool) -> bytes:
    if settings.service_secret:
        if len(settings.service_secret) < MIN_SECRET:
            raise ConfigurationError(f"setting service_secret (MM_CDS_SERVICE_SECRET): at least {MIN_SECRET} "
                                     "characters (it keys the patient and user hashes)")
        return settings.service_secret.encode()
    if production:
        raise ConfigurationError("setting service_secret (MM_CDS_SERVICE_SECRET) is required by the production "
                                 "server: it keys the patient, user and encounter hashes of the issued-card "
                                 "records (every replica needs the same one)")
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(made)
    log.warning("service_secret not set: the development server made one in %s (set service_secret in "
                "production: docs/configuration.md)", path, extra={"event": "service_secret_generated"})
    return made
