"""The identity layer of `mesh serve`: issued tokens, OpenID Connect JWTs and `mesh token`.

Fast: an empty mesh with a principals.yaml and one domain folder, RSA keys made by the test,
JWKS served from a file or a loopback HTTP server. No build.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.server
import json
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mesh_platform.cli.main import cli
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import MeshError
from mesh_platform.serve.identity import AuthenticationError, Authenticator, Identity
from mesh_platform.serve.oidc import claim_name, claim_principal, verify_jwt
from mesh_platform.serve.tokens import TokenStore, parse_expires, token_store
from mesh_platform.settings import OidcSettings

ISSUER = "https://login.example.com"
AUDIENCE = "mesh-test"
PRINCIPALS = """\
principals:
  - id: team:campaigns
  - id: user:alice
    member_of: [team:campaigns]
  - id: user:carol_at_example.com
"""


def _mesh(root: Path, extra: str = "") -> Mesh:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mesh.yaml").write_text("state_dir: state\n" + extra)
    (root / "principals.yaml").write_text(PRINCIPALS)
    (root / "domains" / "sales").mkdir(parents=True)
    (root / "domains" / "sales" / "domain.yaml").write_text("name: sales\n")
    return load_mesh(root)


@pytest.fixture
def small_mesh(tmp_path: Path) -> Mesh:
    return _mesh(tmp_path / "mesh")


@pytest.fixture
def store(small_mesh: Mesh) -> TokenStore:
    return token_store(small_mesh)


# -- issued tokens -------------------------------------------------------------------------------


def test_a_token_is_issued_verified_and_revoked(store):
    secret, record = store.create("user:alice", expires=dt.timedelta(days=1), description="bi")
    assert secret.startswith(f"mesh_{record.id}_") and len(record.id) == 12
    assert store.verify("user:alice", secret).id == record.id
    assert store.still_valid(record.id)
    revoked = store.revoke(record.id)
    assert revoked.revoked is not None
    assert not store.still_valid(record.id)
    with pytest.raises(AuthenticationError) as refused:
        store.verify("user:alice", secret)
    assert refused.value.reason == "revoked"
    assert [r.id for r in store.list()] == [record.id]


def test_the_file_is_private_and_holds_no_secret(store):
    secret, _ = store.create("sales", expires=None)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    text = store.path.read_text()
    assert secret not in text and secret.rsplit("_", 1)[-1] not in text
    assert secret.split("_", 2)[2] not in text  # not the random part either
    assert json.loads(text)["tokens"][0]["expires"] is None


def test_every_failure_has_the_same_message_and_its_own_reason(store):
    secret, record = store.create("team:campaigns", expires=dt.timedelta(hours=1))
    expired, lapsed = store.create("team:campaigns", expires=dt.timedelta(seconds=-1))
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    unknown = f"mesh_{'0' * 12}_{secret.split('_', 2)[2]}"
    cases = {
        "wrong secret": ("team:campaigns", wrong),
        "unknown token": ("team:campaigns", unknown),
        "expired": ("team:campaigns", expired),
        "principal mismatch": ("user:alice", secret),
        "malformed token": ("team:campaigns", "mesh_" + record.id + "_short"),
    }
    for reason, (user, password) in cases.items():
        with pytest.raises(AuthenticationError) as refused:
            store.verify(user, password)
        assert refused.value.reason == reason
        assert refused.value.what == f"password authentication failed for user {user}"
        assert password not in str(refused.value)
    assert store.still_valid(record.id) and not store.still_valid(lapsed.id)


def test_domain_prefix_names_the_same_principal(store):
    secret, record = store.create("domain:sales", expires=None)
    assert record.principal == "sales"
    assert store.verify("sales", secret).id == record.id
    assert store.verify("domain:sales", secret).id == record.id


def test_unknown_principal_refused_at_create_and_at_login(small_mesh, store):
    with pytest.raises(MeshError, match="unknown principal 'user:mallory'"):
        store.create("user:mallory", expires=None)
    with pytest.raises(MeshError, match="must be a domain name"):
        store.create("User:Alice", expires=None)
    assert store.list() == []
    secret, _ = store.create("user:carol_at_example.com", expires=None)
    (small_mesh.root / "principals.yaml").write_text("principals:\n  - id: user:alice\n")
    with pytest.raises(AuthenticationError) as refused:
        store.verify("user:carol_at_example.com", secret)
    assert refused.value.reason == "unknown principal"


def test_revoking_an_unknown_id_names_it_and_the_listing(store):
    with pytest.raises(MeshError) as error:
        store.revoke("0123456789ab")
    assert "0123456789ab" in error.value.what and "mesh token list" in error.value.fix


def test_revocation_by_another_writer_is_seen_on_the_next_check(small_mesh, store):
    _, record = store.create("user:alice", expires=None)
    assert store.still_valid(record.id)  # cached
    token_store(small_mesh).revoke(record.id)  # another process's store
    assert not store.still_valid(record.id)


def test_a_corrupt_tokens_file_fails_closed(store):
    secret, record = store.create("sales", expires=None)
    store.path.write_text('{"version": 1, "tokens": [{"id": "x"}]}')
    with pytest.raises(AuthenticationError) as refused:
        store.verify("sales", secret)
    assert refused.value.reason == "tokens file unreadable"
    assert not store.still_valid(record.id)
    with pytest.raises(MeshError) as error:
        store.list()
    assert error.value.path == store.path and "mesh token create" in error.value.fix


def _create_many(root: str, count: int, queue) -> None:
    store = token_store(load_mesh(Path(root)))
    queue.put([store.create("sales", expires=None)[1].id for _ in range(count)])


def test_concurrent_creates_from_two_processes_keep_every_token(small_mesh, store):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_create_many, args=(str(small_mesh.root), 15, queue))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    made = queue.get(timeout=60) + queue.get(timeout=60)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(made) == 30
    assert sorted(r.id for r in store.list()) == sorted(made)


def test_expires_option_grammar():
    assert parse_expires("30d") == dt.timedelta(days=30)
    assert parse_expires("12h") == dt.timedelta(hours=12)
    assert parse_expires("90m") == dt.timedelta(minutes=90)
    assert parse_expires("never") is None
    for bad in ("0d", "-1d", "soon", ""):
        with pytest.raises(ValueError, match="never"):
            parse_expires(bad)


# -- OpenID Connect ------------------------------------------------------------------------------


def _jwk(private_key, kid: str, **extra) -> dict:
    public = private_key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else None
    algorithm = algorithm or jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(public)), "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="module")
def keys():
    return {
        "good": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture
def oidc(tmp_path: Path, keys) -> tuple[OidcSettings, Path]:
    root = tmp_path / "oidc"
    root.mkdir()
    document = {"keys": [_jwk(keys["good"], "k1"), _jwk(keys["ec"], "k2")]}
    (root / "jwks.json").write_text(json.dumps(document))
    return OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks="jwks.json"), root


def _claims(**overrides) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key, claims: dict, *, kid: str | None = "k1", algorithm: str = "RS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def _refused(token: str, settings: OidcSettings, root: Path) -> str:
    with pytest.raises(AuthenticationError) as refused:
        verify_jwt(token, settings, root=root, user="user:alice")
    assert refused.value.what == "password authentication failed for user user:alice"
    return refused.value.reason


def test_a_good_token_maps_to_its_principal_and_teams(oidc, keys):
    settings, root = oidc
    groups = ["campaigns", "Data Engineers", 7, "ops@example.com", "campaigns"]
    token = _sign(keys["good"], _claims(groups=groups))
    identity = verify_jwt(token, settings, root=root)
    assert identity.principal == "user:alice" and identity.method == "oidc"
    assert identity.teams == ("team:campaigns", "team:ops_at_example.com")
    assert identity.subject == "alice"
    assert identity.expires_at == pytest.approx(time.time() + 600, abs=5)
    ec_token = _sign(keys["ec"], _claims(), kid="k2", algorithm="ES256")
    assert verify_jwt(ec_token, settings, root=root).principal == "user:alice"


def test_every_bad_token_is_refused_with_its_reason(oidc, keys):
    settings, root = oidc
    public_pem = (
        keys["good"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"k1"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=")
    unsigned = f"{header.decode()}.{body.decode()}."
    hs256 = _hs256(public_pem, _claims())
    cases = {
        "bad signature": _sign(keys["other"], _claims()),
        "expired": _sign(keys["good"], _claims(exp=int(time.time()) - 120)),
        "wrong audience": _sign(keys["good"], _claims(aud="another-app")),
        "wrong issuer": _sign(keys["good"], _claims(iss="https://evil.example.com")),
        "unknown key": _sign(keys["other"], _claims(), kid="k9"),
        "malformed": _sign(keys["good"], _claims(exp=None)),
        "algorithm not allowed": hs256,
        "unmappable principal": _sign(keys["good"], _claims(sub="Alice")),
    }
    for reason, token in cases.items():
        assert _refused(token, settings, root) == reason, reason
    assert _refused(unsigned, settings, root) == "algorithm not allowed"
    # RS256 on the EC key, or ES256 claimed for the RSA key: the key decides its algorithm
    mismatched = _sign(keys["good"], _claims(), kid="k2")
    assert _refused(mismatched, settings, root) == "algorithm not allowed"
    assert _refused(_sign(keys["good"], _claims(iss=None)), settings, root) == "malformed"
    assert _refused(_sign(keys["good"], _claims(aud=None)), settings, root) == "malformed"
    assert _refused("a.b.c", settings, root) == "malformed"


def _hs256(secret: bytes, claims: dict) -> str:
    """An HS256 token whose HMAC key is the RSA public key's PEM (the key-confusion attack);
    built by hand, since PyJWT refuses to sign with a PEM as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = (
        b64(b'{"alg":"HS256","typ":"JWT","kid":"k1"}') + "." + b64(json.dumps(claims).encode())
    )
    mac = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(mac)}"


def test_hs256_is_refused_even_when_its_key_would_verify(oidc, keys):
    """The key-confusion attack: an HS256 token keyed with the public key, refused before any
    key is used, even with HS256 smuggled into the allowlist (the settings refuse it too)."""
    settings, root = oidc
    pem = (
        keys["good"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = _hs256(pem, _claims())
    assert _refused(token, settings, root) == "algorithm not allowed"
    with pytest.raises(ValueError):
        OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks="jwks.json", algorithms=["HS256"])
    smuggled = settings.model_copy(update={"algorithms": ["RS256", "HS256"]})
    assert _refused(token, smuggled, root) == "algorithm not allowed"


def test_leeway_and_a_changed_jwks_file(oidc, keys):
    settings, root = oidc
    late = _sign(keys["good"], _claims(exp=int(time.time()) - 10))
    assert verify_jwt(late, settings, root=root).principal == "user:alice"  # within 30 s
    strict = settings.model_copy(update={"leeway_seconds": 0})
    assert _refused(late, strict, root) == "expired"
    token = _sign(keys["other"], _claims(), kid="k3")
    assert _refused(token, settings, root) == "unknown key"
    (root / "jwks.json").write_text(json.dumps({"keys": [_jwk(keys["other"], "k3")]}))
    assert verify_jwt(token, settings, root=root).principal == "user:alice"  # rotated in


def test_unreadable_keys_refuse_every_token(oidc, keys):
    settings, root = oidc
    token = _sign(keys["good"], _claims())
    for broken in ("[]", "{not json", '{"keys": []}'):
        (root / "jwks.json").write_text(broken)
        with pytest.raises(AuthenticationError) as refused:
            verify_jwt(token, settings, root=root)
        assert refused.value.reason == "keys unavailable"
        assert "serve.oidc.jwks" in refused.value.__cause__.what


def test_claim_mapping_is_safe_and_deterministic():
    assert claim_name("carol") == "carol"
    assert claim_name("c.smith-2") == "c.smith-2"
    assert claim_name("Carol@Example.COM") == "carol_at_example.com"
    assert claim_name("carol@gmail.com") != claim_name("carol@example.com")
    assert claim_name("x_at_y@z.com") == "x_at_y_at_z.com"
    for refused in ("Carol", "carol_at_example.com", "carol+x@example.com", "00u1abc", "a:b",
                    "", None, 5, ["carol"], "a" * 64):  # fmt: skip
        assert claim_name(refused) is None, refused
    assert claim_principal("alice", "user:") == "user:alice"
    assert claim_principal("sales", "domain:") == "sales"
    assert claim_principal("alice", "bad prefix ") is None


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    document = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *args) -> None:
        pass


def test_jwks_over_http_from_loopback(tmp_path, keys):
    handler = type("Handler", (_JwksHandler,), {"document": json.dumps(
        {"keys": [_jwk(keys["good"], "k1")]}).encode(), "hits": 0})  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks-{tmp_path.name}.json"
        settings = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks=url)
        for _ in range(3):
            identity = verify_jwt(_sign(keys["good"], _claims()), settings, root=tmp_path)
            assert identity.principal == "user:alice"
        assert handler.hits == 1  # cached
        assert _refused(_sign(keys["other"], _claims()), settings, tmp_path) == "bad signature"
        remote = settings.model_copy(update={"jwks": "http://login.example.com/jwks.json"})
        assert _refused(_sign(keys["good"], _claims()), remote, tmp_path) == "keys unavailable"
    finally:
        server.shutdown()
        server.server_close()


# -- the authenticator ---------------------------------------------------------------------------


@pytest.fixture
def oidc_mesh(tmp_path: Path, keys) -> Mesh:
    extra = (
        f"serve:\n  oidc:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks: jwks.json\n"
    )
    mesh = _mesh(tmp_path / "mesh", extra)
    (mesh.root / "jwks.json").write_text(json.dumps({"keys": [_jwk(keys["good"], "k1")]}))
    return mesh


def _reason(auth: Authenticator, user: str, password: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        auth.authenticate(user, password)
    return refused.value.reason


def test_the_authenticator_routes_tokens_and_jwts(oidc_mesh, keys):
    auth = Authenticator(oidc_mesh)
    secret, record = auth.tokens.create("user:alice", expires=None)
    identity = auth.authenticate("user:alice", secret)
    assert identity == Identity("user:alice", "token", token_id=record.id)
    assert auth.still_valid(identity)
    auth.tokens.revoke(record.id)
    assert not auth.still_valid(identity)

    carol = _sign(keys["good"], _claims(sub="carol@example.com"))
    assert auth.authenticate("carol@example.com", carol).principal == "user:carol_at_example.com"
    assert auth.authenticate("user:carol_at_example.com", carol).subject == "carol@example.com"
    assert _reason(auth, "user:alice", carol) == "principal mismatch"
    assert _reason(auth, "carol", carol) == "principal mismatch"

    # an undeclared user is known through a declared team the provider vouches for
    bob = _sign(keys["good"], _claims(sub="bob", groups=["campaigns"]))
    assert auth.authenticate("bob", bob).teams == ("team:campaigns",)
    stranger = _sign(keys["good"], _claims(sub="bob", groups=["nobody"]))
    assert _reason(auth, "bob", stranger) == "unknown principal"

    assert _reason(auth, "user:alice", "hunter2") == "not a token"
    identity = auth.authenticate("alice", _sign(keys["good"], _claims()))
    assert auth.still_valid(identity)
    assert not auth.still_valid(identity, now=identity.expires_at + 31)


def test_jwts_are_refused_without_oidc_settings(small_mesh, keys):
    assert _reason(Authenticator(small_mesh), "alice", _sign(keys["good"], _claims())) == (
        "oidc not configured"
    )


# -- mesh token ----------------------------------------------------------------------------------


def test_mesh_token_create_list_revoke(small_mesh):
    root = ["--root", str(small_mesh.root)]
    runner = CliRunner()
    created = runner.invoke(
        cli, [*root, "token", "create", "domain:sales", "--expires", "12h", "--description", "bi"]
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("mesh_") and "\n" not in secret
    assert created.output.count(secret) == 1  # printed once, on stdout only
    assert "not shown again" in created.stderr and "user=sales password=" in created.stderr
    token_id = secret.split("_")[1]
    assert token_store(small_mesh).verify("sales", secret).id == token_id

    listed = runner.invoke(cli, [*root, "token", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert token_id in listed.output and "sales" in listed.output and "bi" in listed.output
    assert secret.split("_", 2)[2] not in listed.output
    assert token_store(small_mesh).list()[0].sha256 not in listed.output

    revoked = runner.invoke(cli, [*root, "token", "revoke", token_id])
    assert revoked.exit_code == 0, revoked.output
    assert f"token {token_id} of sales revoked" in revoked.output
    assert not token_store(small_mesh).still_valid(token_id)

    unknown = runner.invoke(cli, [*root, "token", "revoke", "ffffffffffff"])
    assert unknown.exit_code == 1 and "mesh token list" in unknown.output
    pasted = runner.invoke(cli, [*root, "token", "revoke", secret])  # the whole token: its id
    assert pasted.exit_code == 0 and secret not in pasted.output
    bad = runner.invoke(cli, [*root, "token", "create", "user:mallory"])
    assert bad.exit_code == 1 and "unknown principal 'user:mallory'" in bad.output
    never = runner.invoke(cli, [*root, "token", "create", "sales", "--expires", "soon"])
    assert never.exit_code == 2 and "never" in never.output
    assert sorted(os.listdir(small_mesh.state_dir / "serve")) == [
        ".tokens.json.lock",
        "tokens.json",
    ]
