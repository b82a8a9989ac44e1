"""Manage the API keys in Consul KV (`wrapper.keys_consul_prefix`) that every wrapper replica follows:

    python3 -m wrapper.keys_cli create --name alice --models 'gpt-*' --rpm 10    (prints the key once)
    python3 -m wrapper.keys_cli list                                            (never a secret)
    python3 -m wrapper.keys_cli update --name alice --tpm 20000 --rpm none      (none: unlimited)
    python3 -m wrapper.keys_cli update --name alice --model-limits '{"gpt-4*": {"rpm": 5}}'
    python3 -m wrapper.keys_cli revoke --name alice

Consul is reached as the wrapper reaches it (env.yaml's `consul:`, CONSUL_HTTP_ADDR), with the operator's
token: --token, else CONSUL_HTTP_TOKEN. The ACL policies it and the wrapper need are in
docs/keys-and-limits.md.
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import consul
import consul.std
from pydantic import ValidationError

from common.settings import ApiKey, ConfigError, ConsulSettings, Settings, key_digest, load_settings, secret

from .key_watch import entry_json

KEY_PREFIX = "sk-oaw-"  # of the keys it creates: recognisable in a leaked file, like OpenAI's sk-
LIMITS = ("rpm", "tpm", "max_concurrent")


class CliError(Exception):
    pass


def _limit(value: str) -> int | None:
    if value.lower() in ("none", "null", ""):
        return None
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive number, or 'none' for unlimited")
    return number


def _models(value: str) -> list[str] | None:
    names = [m.strip() for m in value.split(",") if m.strip()]
    return None if value.strip().lower() in ("all", "none", "*") else names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m wrapper.keys_cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, metavar="PATH", help="settings file (default: env.yaml)")
    p.add_argument("--token", default=None, help="Consul ACL token (default: CONSUL_HTTP_TOKEN)")
    p.add_argument("--prefix", default=None, help="KV prefix (default: wrapper.keys_consul_prefix)")
    commands = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("create", "create a key and print it once"), ("update", "change a key's models or limits")):
        c = commands.add_parser(name, help=helptext)
        c.add_argument("--name", required=True)
        c.add_argument("--models", type=_models, default=argparse.SUPPRESS,
                       help="comma-separated names or globs ('gpt-*'); 'all' for every model")
        for limit in LIMITS:
            c.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=_limit, default=argparse.SUPPRESS,
                           metavar="N|none")
        c.add_argument("--budget", default=argparse.SUPPRESS, metavar="TOKENS/day|month|none",
                       help="a token budget, e.g. 1000000/month")
        c.add_argument("--model-limits", type=_model_limits, default=argparse.SUPPRESS, metavar="JSON|none",
                       help="""limits per model, e.g. '{"gpt-*": {"rpm": 5}}' (on top of the key's own)""")
        c.add_argument("--admin", type=lambda v: v.lower() in ("1", "true", "yes"), default=argparse.SUPPRESS,
                       metavar="true|false", help="may read /admin/usage")
    commands.add_parser("list", help="names, models and limits (never a secret)")
    revoke = commands.add_parser("revoke", help="delete a key: refused by every replica within a second")
    revoke.add_argument("--name", required=True)
    return p


def _model_limits(value: str) -> dict[str, Any] | None:
    if value.lower() in ("none", "null", ""):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError("not JSON") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError('expected {"model or glob": {"rpm": N, ...}}')
    return parsed


def _budget(value: str) -> dict[str, Any] | None:
    if value.lower() in ("none", "null", ""):
        return None
    tokens, _, per = value.partition("/")
    return {"tokens": int(tokens), "per": per}


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    changes = {k: given[k] for k in ("models", *LIMITS, "admin", "model_limits") if k in given}
    if "budget" in given:
        changes["budget"] = _budget(given["budget"])
    return changes


def _entry(fields: dict[str, Any]) -> ApiKey:
    try:
        return ApiKey.model_validate(fields)
    except ValidationError as exc:
        raise CliError("; ".join(f"{'.'.join(map(str, e['loc'])) or '-'}: {e['msg']}" for e in exc.errors())) from None


class _Consul(consul.Consul):
    """python-consul2's blocking client at the address the settings give (it would re-read
    CONSUL_HTTP_ADDR with a looser parser: see svc_mgr/consul_client.py)."""

    def __init__(self, settings: ConsulSettings, token: str | None) -> None:
        self.settings = settings
        super().__init__(token=token, verify=settings.verify)

    def http_connect(self, host, port, scheme, verify=True, cert=None, timeout=None):
        s = self.settings
        return consul.std.HTTPClient(s.host, s.port, s.scheme, s.verify, cert, timeout)


def _client(settings: Settings, token: str | None) -> consul.Consul:
    return _Consul(settings.consul, token or secret(settings.consul.token))


def create(kv: consul.Consul.KV, path: str, args: argparse.Namespace) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = _entry({"key_sha256": key_digest(key).hex(), "name": args.name, **_changes(args)})
    if not kv.put(path, entry_json(entry), cas=0):  # cas=0: only if no key has that name
        raise CliError(f"a key named '{args.name}' exists already (update or revoke it)")
    return key


def update(kv: consul.Consul.KV, path: str, args: argparse.Namespace) -> None:
    index, found = kv.get(path)
    if found is None:
        raise CliError(f"no key named '{args.name}'")
    fields = {**json.loads(found["Value"]), **_changes(args)}
    if not kv.put(path, entry_json(_entry(fields)), cas=found["ModifyIndex"]):
        raise CliError(f"key '{args.name}' changed meanwhile; run the command again")


def list_keys(kv: consul.Consul.KV, prefix: str) -> list[dict[str, Any]]:
    _, entries = kv.get(prefix, recurse=True)
    out = []
    for entry in entries or ():
        if entry.get("Value"):
            fields = json.loads(entry["Value"])
            fields.pop("key_sha256", None)  # not a secret, but nothing an operator needs to see
            out.append(fields)
    return out


def revoke(kv: consul.Consul.KV, path: str, name: str) -> None:
    index, found = kv.get(path)
    if found is None:
        raise CliError(f"no key named '{name}'")
    kv.delete(path)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        prefix = args.prefix or settings.wrapper.keys_consul_prefix
        if not prefix:
            raise CliError("no KV prefix: set wrapper.keys_consul_prefix in the config or pass --prefix")
        if "/" in getattr(args, "name", "") or not getattr(args, "name", "x"):
            raise CliError("a key's name may not be empty or contain '/'")
        kv = _client(settings, args.token).kv
        path = prefix + getattr(args, "name", "")
        if args.command == "create":
            key = create(kv, path, args)
            print(key)
            print(f"key '{args.name}' created: this is the only time it is shown", file=sys.stderr)
        elif args.command == "update":
            update(kv, path, args)
        elif args.command == "list":
            for fields in list_keys(kv, prefix):
                print(json.dumps(fields, sort_keys=True))
        else:
            revoke(kv, path, args.name)
    except (CliError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except consul.ACLPermissionDenied:
        print("error: Consul refused the token (see docs/keys-and-limits.md for the policy needed)", file=sys.stderr)
        return 1
    except (consul.ConsulException, OSError) as exc:
        print(f"error: Consul at {settings.consul.address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


