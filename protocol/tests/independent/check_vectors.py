#!/usr/bin/env python3
"""Checks the golden vectors with implementations that share no code with ukey-protocol.

* JWS (RFC 7515, flattened JSON): `jwcrypto` verifies one vector of each algorithm family --
  ES256 (job-new.json), RS256 (cancel.json), PS256 (certs-rejected.json) -- and the header's
  `typ`; a tampered copy must fail.
* HPKE (RFC 9180, base mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM): Python
  `cryptography`'s `hpke.Suite` opens the SO PIN sealed to the station in job-unlock.json, and
  a PIN it seals opens in the crate's own test (printed for it to check).

Usage: check_vectors.py VECTORS_DIR KEYS_DIR. Prints one line per check; exits non-zero on the
first failure. The keys are the fixtures' test keys (they protect nothing).
"""
import base64
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

STATION = "desk-01"
SO_PIN = b"84913027"
SEAL_LABEL = b"ukey-station seal v1"


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ec_key(byte):
    """The fixtures' P-256 keys are the scalar with every byte equal to `byte`."""
    return ec.derive_private_key(int.from_bytes(bytes([byte]) * 32, "big"), ec.SECP256R1())


def check_jws(vectors, name, key, alg, typ):
    text = (vectors / name).read_text().strip()
    token = jws.JWS()
    token.deserialize(text)
    token.verify(key, alg=alg)
    header = json.loads(b64url_decode(json.loads(text)["protected"]))
    assert header == {"alg": alg, "kid": header["kid"], "typ": typ}, header
    payload = json.loads(token.payload)
    assert payload["station_id"] == STATION, payload
    # A flipped payload byte must not verify.
    wire = json.loads(text)
    raw = bytearray(b64url_decode(wire["payload"]))
    raw[5] ^= 1
    wire["payload"] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    forged = jws.JWS()
    forged.deserialize(json.dumps(wire))
    try:
        forged.verify(key, alg=alg)
    except jws.InvalidJWSSignature:
        pass
    else:
        raise AssertionError(f"{name}: tampered copy verified")
    print(f"ok: {name}: {alg} JWS verified by jwcrypto (typ {typ})")
    return payload


def info(job_id, purpose):
    return SEAL_LABEL + b"\x00" + f"job/{job_id}/{purpose}".encode()


def main():
    vectors, keys = Path(sys.argv[1]), Path(sys.argv[2])
    platform_ec = jwk.JWK.from_pyca(ec_key(0x11).public_key())
    rsa_pem = (keys / "platform-rsa-test-key.pem").read_bytes()
    rsa_public = serialization.load_pem_private_key(rsa_pem, None).public_key()
    platform_rsa = jwk.JWK.from_pyca(rsa_public)

    check_jws(vectors, "job-new.json", platform_ec, "ES256", "ukey-job+jws")
    check_jws(vectors, "cancel.json", platform_rsa, "RS256", "ukey-cancel+jws")
    check_jws(vectors, "certs-rejected.json", platform_rsa, "PS256", "ukey-certs+jws")
    job = check_jws(vectors, "job-unlock.json", platform_ec, "ES256", "ukey-job+jws")

    suite = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sealed = job["so_pin"]
    assert sealed["alg"] == "HPKE-P256-SHA256-A256GCM", sealed["alg"]
    blob = base64.b64decode(sealed["enc"]) + base64.b64decode(sealed["ct"])
    station = ec_key(0x22)
    opened = suite.decrypt(blob, station, info=info(job["job_id"], "so-pin"))
    assert opened == SO_PIN, "wrong SO PIN"
    try:
        suite.decrypt(blob, station, info=info(job["job_id"], "user-pin"))
    except Exception:  # noqa: BLE001 - any failure is the expected outcome
        pass
    else:
        raise AssertionError("opened under the wrong context")
    print("ok: job-unlock.json: HPKE so_pin opened by cryptography")

    # The other direction: a PIN sealed here, for the crate to open.
    blob = suite.encrypt(b"275103", ec_key(0x33).public_key(), info=info("J-py", "user-pin"))
    print("sealed:", json.dumps({
        "alg": "HPKE-P256-SHA256-A256GCM",
        "enc": base64.b64encode(blob[:65]).decode(),
        "ct": base64.b64encode(blob[65:]).decode(),
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
