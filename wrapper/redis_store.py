"""The counters of wrapper/counters.py in one Redis that every wrapper replica shares: each admission and
each settlement is one atomic Lua script, one round trip, through the lean client of wrapper/resp.py
(redis-py for TLS and unix sockets). No rate-limit library is used: `limits` (the best kept one with
Redis storage) has no way to charge tokens after the answer, nor concurrency or calendar budgets, and its
moving window stores one entry per unit of cost (a TPM of 100k would be 100k entries); see
docs/keys-and-limits.md."""
from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .counters import (
    BUCKETS,
    CONCURRENCY_TTL_MS,
    REFUSALS,
    SEP,
    USAGE_FIELDS,
    Figures,
    Quota,
    Settlement,
    UsageFigures,
    UsageRow,
    Verdict,
    usage_rows,
)
from .resp import Arg, RespClient

# the live sum and oldest bucket of a window hash (bucket -> count), dropping the buckets that left it
_WINDOW = """
local function window(key, now_bucket)
  local used, oldest = 0, nil
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    local b = tonumber(h[i])
    if b <= now_bucket - __BUCKETS__ then
      redis.call('HDEL', key, h[i])
    else
      used = used + tonumber(h[i + 1])
      if oldest == nil or b < oldest then oldest = b end
    end
  end
  return used, oldest
end
local function clock(size)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  return now, math.floor(now / size)
end
local function reset_ms(oldest, now_bucket, now, size)
  local first = oldest or now_bucket
  return math.max(math.floor(((first + __BUCKETS__) * size - now) * 1000), 0)
end
""".replace("__BUCKETS__", str(BUCKETS))

# Every quota of a request (a key's, and a key's for one model) in one script: all admit it and count it,
# or none counts it.
# KEYS, per quota: requests window, tokens window, in flight, budget counter
# ARGV: bucket size (s), window ttl (ms), in-flight ttl (ms); per quota: rpm, tpm, max_concurrent, budget
#       (0 = unlimited), estimate
# returns: refusal code, refusing quota (1-based; 0: none), bucket; per quota: requests, their reset (ms),
#          tokens, their reset (ms)
_ADMIT = _WINDOW + """
local size, ttl, conc_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, b = clock(size)
local n = #KEYS / 4
local refused, refused_by = 0, 0
local seen = {}
for i = 1, n do
  local k, a = 4 * (i - 1), 3 + 5 * (i - 1)
  local rpm, tpm, conc, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local requests, oldest_r = window(KEYS[k + 1], b)
  local tokens, oldest_t = window(KEYS[k + 2], b)
  local code = 0
  if rpm > 0 and requests + 1 > rpm then code = 1
  elseif tpm > 0 and tokens >= tpm then code = 2
  elseif conc > 0 and tonumber(redis.call('GET', KEYS[k + 3]) or '0') >= conc then code = 3
  elseif budget > 0 and tonumber(redis.call('GET', KEYS[k + 4]) or '0') >= budget then code = 4
  end
  if code > 0 and refused == 0 then refused, refused_by = code, i end
  seen[i] = {requests, oldest_r, tokens, oldest_t}
end
if refused == 0 then
  for i = 1, n do
    local k, a = 4 * (i - 1), 3 + 5 * (i - 1)
    local rpm, tpm, conc, estimate = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 5])
    local f = seen[i]
    if rpm > 0 then
      redis.call('HINCRBY', KEYS[k + 1], b, 1)
      redis.call('PEXPIRE', KEYS[k + 1], ttl)
      f[1] = f[1] + 1
      f[2] = f[2] or b
    end
    if tpm > 0 then
      redis.call('HINCRBY', KEYS[k + 2], b, estimate)
      redis.call('PEXPIRE', KEYS[k + 2], ttl)
      f[3] = f[3] + estimate
    end
    if conc > 0 then
      redis.call('INCR', KEYS[k + 3])
      redis.call('PEXPIRE', KEYS[k + 3], conc_ttl)
    end
  end
end
local out = {refused, refused_by, b}
for i = 1, n do
  local f = seen[i]
  out[#out + 1] = f[1]
  out[#out + 1] = reset_ms(f[2], b, now, size)
  out[#out + 1] = f[3]
  out[#out + 1] = reset_ms(f[4], b, now, size)
end
return out
"""

# KEYS, per quota: tokens window, in flight, budget counter
# ARGV: bucket size, admitted bucket, tokens charged, window ttl (ms); per quota: estimate, tpm?, conc?,
#       budget?, budget ttl (s)
_SETTLE = _WINDOW + """
local admitted, used, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, b = clock(tonumber(ARGV[1]))
for i = 1, #KEYS / 3 do
  local k, a = 3 * (i - 1), 4 + 5 * (i - 1)
  if ARGV[a + 2] == '1' then
    redis.call('HINCRBY', KEYS[k + 1], admitted, -tonumber(ARGV[a + 1]))
    redis.call('HINCRBY', KEYS[k + 1], b, used)
    redis.call('PEXPIRE', KEYS[k + 1], ttl)
  end
  if ARGV[a + 3] == '1' and tonumber(redis.call('DECR', KEYS[k + 2])) < 0 then redis.call('SET', KEYS[k + 2], 0) end
  if ARGV[a + 4] == '1' and used > 0 then
    redis.call('INCRBY', KEYS[k + 3], used)
    redis.call('EXPIRE', KEYS[k + 3], tonumber(ARGV[a + 5]))
  end
end
return 0
"""


def client(url: str, timeout: float) -> Redis:
    """A pooled client that gives up after `timeout` on connect or read and never retries by itself: the
    Limiter decides what an unreachable Redis means."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)


class Transport(Protocol):
    async def call(self, *args: Arg) -> Any: ...
    async def close(self) -> None: ...


class RedisPy:
    """redis-py, for the URLs RespClient does not speak (rediss://, unix://)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.redis = client(url, timeout)

    async def call(self, *args: Arg) -> Any:
        return await self.redis.execute_command(*args)

    async def close(self) -> None:
        await self.redis.aclose()


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, transport: Transport, keys: list[str], args: list[Arg]) -> Any:
        try:
            return await transport.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except Exception as exc:  # RespError or redis-py's NoScriptError: a restarted Redis forgot it
            if "NOSCRIPT" not in str(exc) and type(exc).__name__ != "NoScriptError":
                raise
            return await transport.call("EVAL", self.source, len(keys), *keys, *args)


def _pairs(reply: Any) -> dict[str, int]:
    """HGETALL's reply (redis-py makes it a dict, RESP is a flat list) as str -> int."""
    items = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in items}


_ADMIT_SCRIPT, _SETTLE_SCRIPT = _Script(_ADMIT), _Script(_SETTLE)


class RedisStore:
    def __init__(self, url: str, timeout: float, prefix: str) -> None:
        self.transport: Transport = RespClient.from_url(url, timeout) or RedisPy(url, timeout)
        self.prefix = prefix

    def _keys(self, counter: str) -> tuple[str, str, str]:
        # one hash tag per key: the keys of one script stay on one node should a cluster proxy split them
        base = f"{self.prefix}{{{counter}}}"
        return f"{base}:requests", f"{base}:tokens", f"{base}:in_flight"

    def _budget_key(self, quota: Quota) -> str:
        return f"{self.prefix}{{{quota.counter}}}:budget:{quota.budget_period}"

    def _usage_key(self, hour: int) -> str:
        return f"{self.prefix}usage:{hour}"

    async def admit(self, quotas: tuple[Quota, ...], window: float) -> Verdict:
        keys: list[str] = []
        args: list[Arg] = [window / BUCKETS, int(window * 2000), CONCURRENCY_TTL_MS]
        for q in quotas:
            keys += [*self._keys(q.counter), self._budget_key(q)]
            args += [q.rpm or 0, q.tpm or 0, q.max_concurrent or 0, q.budget or 0, q.estimate]
        out = [int(v) for v in await _ADMIT_SCRIPT(self.transport, keys, args)]
        code, by, bucket = out[:3]
        figures = tuple(Figures(out[i], out[i + 1] / 1000, out[i + 2], out[i + 3] / 1000)
                        for i in range(3, len(out), 4))
        return Verdict(REFUSALS[code], by - 1, figures, bucket)

    async def settle(self, s: Settlement, window: float) -> None:
        if s.bucket is None:
            return
        keys: list[str] = []
        args: list[Arg] = [window / BUCKETS, s.bucket, s.charge, int(window * 2000)]
        for q in s.quotas:
            _, tokens, in_flight = self._keys(q.counter)
            keys += [tokens, in_flight, self._budget_key(q)]
            args += [q.estimate, int(q.tpm is not None), int(q.max_concurrent is not None), int(q.budget is not None),
                     q.budget_ttl]
        await _SETTLE_SCRIPT(self.transport, keys, args)

    async def add_usage(self, figures: UsageFigures, ttl: int) -> bool:
        """A second's usage of this process, pipelined (the commands go out together)."""
        calls = [self.transport.call("HINCRBY", self._usage_key(hour), f"{name}{SEP}{model}{SEP}{figure}", count)
                 for (hour, name, model), counts in figures.items()
                 for figure, count in zip(USAGE_FIELDS, counts, strict=True) if count]
        await asyncio.gather(*calls)
        await asyncio.gather(*(self.transport.call("EXPIRE", self._usage_key(hour), ttl)
                               for hour in {hour for hour, _, _ in figures}))
        return True

    async def usage(self, hours: list[int]) -> list[UsageRow]:
        answers = await asyncio.gather(*(self.transport.call("HGETALL", self._usage_key(hour)) for hour in hours))
        rows: list[UsageRow] = []
        for hour, reply in zip(hours, answers, strict=True):
            rows += usage_rows(hour, _pairs(reply))
        return rows

    async def ping(self) -> None:
        await self.transport.call("PING")

    async def close(self) -> None:
        await self.transport.close()
