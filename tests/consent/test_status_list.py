"""Token Status List: the draft's test vectors, round trips, bounds, bombs, and the signed token."""

from __future__ import annotations

import base64
import json
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.consent.proofs.jose import BadSignature, ClaimError, ExpiredToken, WrongType
from broker.consent.status_list import (
    INVALID,
    STATUS_LIST_TYP,
    SUSPENDED,
    VALID,
    StatusList,
    StatusListError,
    referenced_token_claim,
    status_list_token,
    verify_status_list_token,
)
from broker.keys import KeyStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URI = "https://broker.example/statuslists/1"
ISSUER = "https://broker.example"
LEEWAY = timedelta(seconds=30)


def joined(text: str) -> str:
    return "".join(text.split())


# -- The draft's examples (draft-ietf-oauth-status-list, §4.1 and "Test vectors") ----------


def test_draft_example_1_bit() -> None:
    # status[0]=1 status[1]=0 status[2]=0 status[3]=1 status[4]=1 status[5]=1 status[6]=0
    # status[7]=1 status[8]=1 status[9]=1 status[10]=0 status[11]=0 status[12]=0 status[13]=1
    # status[14]=0 status[15]=1  ->  [0xB9, 0xA3]  ->  "eNrbuRgAAhcBXQ"
    statuses = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    status_list = StatusList(16, bits=1)
    for idx, value in enumerate(statuses):
        status_list.set(idx, value)
    assert status_list.to_bytes() == bytes([0xB9, 0xA3])
    assert status_list.encode() == "eNrbuRgAAhcBXQ"
    decoded = StatusList.decode("eNrbuRgAAhcBXQ", bits=1)
    assert [decoded.get(i) for i in range(16)] == statuses


def test_draft_example_2_bits() -> None:
    statuses = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]  # -> [0xC9, 0x44, 0xF9] -> "eNo76fITAAPfAgc"
    status_list = StatusList(12, bits=2)
    for idx, value in enumerate(statuses):
        status_list.set(idx, value)
    assert status_list.to_bytes() == bytes([0xC9, 0x44, 0xF9])
    assert status_list.to_json() == {"bits": 2, "lst": "eNo76fITAAPfAgc"}
    decoded = StatusList.decode("eNo76fITAAPfAgc", bits=2)
    assert [decoded.get(i) for i in range(12)] == statuses


# The "Test vectors" appendix: lists of 2^20 entries, the values not named being 0.
LONG_INDICES = [0, 1993, 25460, 159495, 495669, 554353, 645645, 723232, 854545, 934534, 1000345]
LONG_1 = joined("""
eNrt3AENwCAMAEGogklACtKQPg9LugC9k_ACvreiogE
AAKkeCQAAAAAAAAAAAAAAAAAAAIBylgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAXG9IAAAAAAAAAPwsJAAAAAAAAAAAAAAAvhsSAAAAAAAAAAA
A7KpLAAAAAAAAAAAAAAAAAAAAAJsLCQAAAAAAAAAAADjelAAAAAAAAAAAKjDMAQAAA
ACAZC8L2AEb""")
LONG_2 = joined("""
eNrt2zENACEQAEEuoaBABP5VIO01fCjIHTMStt9ovGV
IAAAAAABAbiEBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEB5WwIAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAID0ugQAAAAAAAAAAAAAAAAAQG12SgAAA
AAAAAAAAAAAAAAAAAAAAAAAAOCSIQEAAAAAAAAAAAAAAAAAAAAAAAD8ExIAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwJEuAQAAAAAAAAAAAAAAAAAAAAAAAMB9S
wIAAAAAAAAAAAAAAAAAAACoYUoAAAAAAAAAAAAAAEBqH81gAQw""")
LONG_4 = joined("""
eNrt0EENgDAQADAIHwImkIIEJEwCUpCEBBQRHOy35Li
1EjoOQGabAgAAAAAAAAAAAAAAAAAAACC1SQEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABADrsCAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAADoxaEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIIoCgAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACArpwKAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAGhqVkAzlwIAAAAAiGVRAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAABx3AoAgLpVAQAAAAAAAAAAAAAAwM89rwMAAAAAAAAAA
AjsA9xMBMA""")
LONG_4_ENTRIES = dict(
    zip(
        [
            0,
            1993,
            35460,
            459495,
            595669,
            754353,
            845645,
            923232,
            924445,
            934534,
            1004534,
            1000345,
            1030203,
            1030204,
            1030205,
        ],
        range(1, 16),
        strict=True,
    )
)


@pytest.mark.parametrize(
    "bits,entries,lst",
    [
        (1, dict.fromkeys(LONG_INDICES, 1), LONG_1),
        (2, dict(zip(LONG_INDICES, [1, 2, 1, 3, 1, 1, 2, 1, 1, 2, 3], strict=True)), LONG_2),
        (4, LONG_4_ENTRIES, LONG_4),
    ],
    ids=["1-bit", "2-bit", "4-bit"],
)
def test_draft_test_vectors(bits: int, entries: dict[int, int], lst: str) -> None:
    status_list = StatusList(2**20, bits=bits)
    for idx, value in entries.items():
        status_list.set(idx, value)
    assert status_list.encode() == lst
    decoded = StatusList.decode(lst, bits=bits)
    assert decoded == status_list
    assert len(decoded) == 2**20
    for idx, value in entries.items():
        assert decoded.get(idx) == value
    assert decoded.get(1) == 0 and decoded.get(2**20 - 1) == 0


# -- Values, bounds, round trips ------------------------------------------------------------


def test_status_values() -> None:
    assert (VALID, INVALID, SUSPENDED) == (0x00, 0x01, 0x02)
    status_list = StatusList(10)  # the broker's default: 2 bits
    assert status_list.bits == 2
    status_list.set(3, SUSPENDED)
    status_list.set(4, INVALID)
    status_list.set(3, VALID)  # suspension is reversible
    assert [status_list.get(i) for i in range(6)] == [0, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_round_trip_every_width(bits: int) -> None:
    size = 1000
    status_list = StatusList(size, bits=bits)
    for idx in range(0, size, 7):
        status_list.set(idx, idx % (1 << bits))
    decoded = StatusList.decode(status_list.encode(), bits)
    for idx in range(size):
        assert decoded.get(idx) == (idx % (1 << bits) if idx % 7 == 0 else 0)
    # The decoded list covers every slot of the bytes: the padding entries read as VALID.
    assert len(decoded) == (size * bits + 7) // 8 * 8 // bits


def test_encoding_is_zlib_level_9_base64url_unpadded() -> None:
    status_list = StatusList(4096, bits=2)
    status_list.set(77, INVALID)
    lst = status_list.encode()
    assert "=" not in lst and "+" not in lst and "/" not in lst
    raw = base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4))
    assert raw[:2] == b"\x78\xda"  # ZLIB header, highest compression
    assert zlib.decompress(raw) == status_list.to_bytes()


@pytest.mark.parametrize("bits", [0, 3, 16, True, "2"])
def test_bits_must_be_1_2_4_or_8(bits: Any) -> None:
    with pytest.raises(StatusListError):
        StatusList(8, bits=bits)
    with pytest.raises(StatusListError):
        StatusList.decode("eNrbuRgAAhcBXQ", bits)


@pytest.mark.parametrize("size", [0, -1, True])
def test_size_positive(size: Any) -> None:
    with pytest.raises(StatusListError):
        StatusList(size)


def test_index_and_value_bounds() -> None:
    status_list = StatusList(8, bits=2)
    for idx in (-1, 8, 10**9):
        with pytest.raises(IndexError):
            status_list.get(idx)
        with pytest.raises(IndexError):
            status_list.set(idx, INVALID)
    with pytest.raises(TypeError):
        status_list.get(True)
    for value in (4, -1, 255, True):
        with pytest.raises(StatusListError):
            status_list.set(0, value)
    status_list.set(7, 3)
    assert status_list.to_bytes() == b"\x00\xc0"


# -- Decoding hostile input -----------------------------------------------------------------


def _lst(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _zeros_bomb(mebibytes: int) -> str:
    """ZLIB data of ``mebibytes`` MiB of zeros, built in a stream (about 1 KiB per MiB)."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    out = [compressor.compress(chunk) for _ in range(mebibytes)]
    return _lst(b"".join(out) + compressor.flush())


def test_decompression_bomb_refused_quickly() -> None:
    bomb = _zeros_bomb(64)  # 16 times the cap, from about 64 KiB
    started = time.perf_counter()
    with pytest.raises(StatusListError, match="larger than"):
        StatusList.decode(bomb, 2)
    assert time.perf_counter() - started < 1.0


def test_size_cap_is_exact() -> None:
    data = _lst(zlib.compress(bytes(1000), 9))
    assert len(StatusList.decode(data, 8, max_bytes=1000)) == 1000
    with pytest.raises(StatusListError, match="larger than"):
        StatusList.decode(data, 8, max_bytes=999)


def _raw_deflate(data: bytes) -> bytes:
    """DEFLATE without the ZLIB wrapper (RFC 1951 alone), which the draft does not allow."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "lst,reason",
    [
        (_lst(zlib.compress(b"\x01\x02"))[:-4], "truncated"),
        (_lst(zlib.compress(b"\x01\x02") + b"junk"), "after"),
        (_lst(b"\x01\x02\x03"), "ZLIB"),
        (_lst(zlib.compress(b"", 9)), "at least one byte"),
        ("eNrbuRgAAhcBXQ==", "base64url"),
        ("eNrbuRgAAhcBXQ+/", "base64url"),
        (_lst(_raw_deflate(b"\x01")), "ZLIB"),
    ],
    ids=["truncated", "trailing-data", "not-zlib", "empty", "padded", "standard-alphabet", "raw-deflate"],
)
def test_malformed_lists(lst: str, reason: str) -> None:
    with pytest.raises(StatusListError, match=reason):
        StatusList.decode(lst, 1)


def test_gzip_is_not_zlib() -> None:
    import gzip

    with pytest.raises(StatusListError):
        StatusList.decode(_lst(gzip.compress(b"\x01\x02")), 1)


# -- The Referenced Token claim ----------------------------------------------------------------


def test_referenced_token_claim() -> None:
    assert referenced_token_claim(URI, 0) == {"status": {"status_list": {"idx": 0, "uri": URI}}}
    assert referenced_token_claim(URI, 41)["status"]["status_list"]["idx"] == 41
    for idx in (-1, True, 1.5):
        with pytest.raises(StatusListError):
            referenced_token_claim(URI, idx)  # type: ignore[arg-type]
    with pytest.raises(StatusListError):
        referenced_token_claim("", 1)


# -- The Status List Token ---------------------------------------------------------------------


@pytest.fixture
def keystore(key_dir: Path) -> KeyStore:
    store = KeyStore(key_dir)
    store.create(NOW)
    return store


@pytest.fixture
def status_list() -> StatusList:
    status_list = StatusList(1024)
    status_list.set(5, INVALID)
    status_list.set(6, SUSPENDED)
    return status_list


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")
    decode = lambda s: json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))  # noqa: E731
    return decode(head), decode(payload)


def _token(keystore: KeyStore, status_list: StatusList) -> str:
    return status_list_token(
        keystore, uri=URI, status_list=status_list, issuer=ISSUER, now=NOW, ttl=timedelta(seconds=30)
    )


def test_token_shape(keystore: KeyStore, status_list: StatusList) -> None:
    header, claims = _parts(_token(keystore, status_list))
    assert header == {"alg": "ES256", "kid": keystore.active_kid, "typ": STATUS_LIST_TYP}
    iat = int(NOW.timestamp())
    assert claims == {
        "sub": URI,
        "iss": ISSUER,
        "iat": iat,
        "exp": iat + 3600,
        "ttl": 30,
        "status_list": {"bits": 2, "lst": status_list.encode()},
    }


def test_token_round_trip(keystore: KeyStore, status_list: StatusList) -> None:
    token = _token(keystore, status_list)
    decoded = verify_status_list_token(
        token, keystore.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
    )
    assert decoded.get(5) == INVALID and decoded.get(6) == SUSPENDED and decoded.get(7) == VALID


def test_token_signature_checked(keystore: KeyStore, status_list: StatusList, tmp_path: Path) -> None:
    token = _token(keystore, status_list)
    stranger = KeyStore(tmp_path / "other")
    stranger.create(NOW)
    with pytest.raises(BadSignature):
        verify_status_list_token(
            token, stranger.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
        )
    # A list that revokes nothing, pasted over the signed one, fails the signature.
    head, _, sig = token.split(".")
    _, claims = _parts(token)
    claims["status_list"]["lst"] = StatusList(1024).encode()
    forged = f"{head}.{_lst(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(BadSignature):
        verify_status_list_token(
            forged, keystore.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
        )


def test_token_typ_checked(keystore: KeyStore, status_list: StatusList) -> None:
    # An access token (or anything else the broker signs) is not a status list.
    token = keystore.sign(_parts(_token(keystore, status_list))[1], "at+jwt")
    with pytest.raises(WrongType):
        verify_status_list_token(
            token, keystore.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
        )


def test_token_sub_and_iss_checked(keystore: KeyStore, status_list: StatusList) -> None:
    token = _token(keystore, status_list)
    jwks = keystore.public_jwks(NOW)
    with pytest.raises(ClaimError, match="sub"):
        verify_status_list_token(token, jwks, expected_uri=URI + "0", issuer=ISSUER, now=NOW, leeway=LEEWAY)
    with pytest.raises(ClaimError, match="iss"):
        verify_status_list_token(token, jwks, expected_uri=URI, issuer=ISSUER + "/x", now=NOW, leeway=LEEWAY)


def test_token_expiry_checked(keystore: KeyStore, status_list: StatusList) -> None:
    token = _token(keystore, status_list)
    jwks = keystore.public_jwks(NOW)
    later = NOW + timedelta(hours=1, seconds=29)
    assert verify_status_list_token(token, jwks, expected_uri=URI, issuer=ISSUER, now=later, leeway=LEEWAY)
    with pytest.raises(ExpiredToken):
        verify_status_list_token(
            token, jwks, expected_uri=URI, issuer=ISSUER, now=later + timedelta(seconds=1), leeway=LEEWAY
        )


@pytest.mark.parametrize(
    "status_claim",
    [
        None,
        "x",
        {"bits": 3, "lst": "eNrbuRgAAhcBXQ"},
        {"bits": 1},
        {"lst": "eNrbuRgAAhcBXQ"},
        {"bits": "1", "lst": "eNrbuRgAAhcBXQ"},
    ],
)
def test_token_status_list_claim_checked(keystore: KeyStore, status_claim: Any) -> None:
    iat = int(NOW.timestamp())
    claims = {"sub": URI, "iss": ISSUER, "iat": iat, "exp": iat + 60, "status_list": status_claim}
    token = keystore.sign({k: v for k, v in claims.items() if v is not None}, STATUS_LIST_TYP)
    with pytest.raises(ClaimError):
        verify_status_list_token(
            token, keystore.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
        )


def test_token_bomb_in_claim_refused(keystore: KeyStore) -> None:
    iat = int(NOW.timestamp())
    bomb = _zeros_bomb(16)
    claims = {"sub": URI, "iss": ISSUER, "iat": iat, "exp": iat + 60, "status_list": {"bits": 2, "lst": bomb}}
    token = keystore.sign(claims, STATUS_LIST_TYP)
    with pytest.raises(ClaimError, match="larger than"):
        verify_status_list_token(
            token, keystore.public_jwks(NOW), expected_uri=URI, issuer=ISSUER, now=NOW, leeway=LEEWAY
        )


def test_token_arguments(keystore: KeyStore, status_list: StatusList) -> None:
    with pytest.raises(StatusListError):
        status_list_token(
            keystore, uri=URI, status_list=status_list, issuer=ISSUER, now=NOW, ttl=timedelta(0)
        )
    with pytest.raises(ValueError):
        status_list_token(
            keystore,
            uri=URI,
            status_list=status_list,
            issuer=ISSUER,
            now=NOW.replace(tzinfo=None),
            ttl=timedelta(seconds=5),
        )
